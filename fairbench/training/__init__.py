"""The one trainer every method runs under: the epoch loop (`trainer`), one step (`step`), how batches reach the
device (`feeder`), precision islands (`precision`), zero-shot scoring (`zeroshot`), the shared losses (`losses`), the
resume state (`resume`) and the pretraining that gives archs without published weights their start (`pretrain`)."""
