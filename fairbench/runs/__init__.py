"""The run-folder lifecycle: plan a job (`jobs`), claim its folder (`claims`), execute it (`execute`), save and resume
its state between epochs (`state`, `interrupt`), write its result (`results`, `provenance`), and read where every run
stands (`status`)."""
