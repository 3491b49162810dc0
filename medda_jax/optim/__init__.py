"""optax GradientTransformations for meta-learning and transfer."""

from medda_jax.optim.avagrad import avagrad, scale_by_avagrad
from medda_jax.optim.inner import coupled_adam, set_learning_rate, step_decay
from medda_jax.optim.maml import maml, maml_meta_gradient, task_mean
from medda_jax.optim.reptile import reptile, reptile_aggregate, reptile_weights
