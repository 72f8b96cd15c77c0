"""Fair-MoE (Wang et al.) as a method package: its MoE layers (`layers`), its Fairness-Oriented Loss (`loss`) and
the registration of `fairmoe` and its ablations (`methods`). Importing the package registers them."""

from . import methods  # noqa: F401 - registers fairmoe and its ablations
