r"""AE-Swarm and AEEnsemble: populations of AE trajectories on a leading axis.

M trajectories (parameters, optimizer state, per-member priors) are stacked
on a leading *population* axis and trained in rounds (theory, "AE-Swarm"):

1. member i trains :math:`B_i` steps;
2. its score :math:`s_i` is the mean loss on the validation set (lower is
   better);
3. soft selection: :math:`w = \mathrm{softmax}(-\beta u)` of scale-free
   selection scores ``u`` (by default the member's rank over [0, 1],
   :func:`selection_scores`; the theory's raw ``s - min s`` is
   ``selection="raw"``); a member whose score is not finite, one that
   diverged, gets weight 0;
4. budgets: :math:`B_i' = \max(B_{\min}, \mathrm{round}(w_i B_{\rm tot}))`
   with :math:`\sum_i B_i' = B_{\rm tot}` exactly (:func:`allocate_budgets`);
5. consensus of the coefficients only (:func:`consensus`):

   .. math::

     \bar c = \sum_i w_i c^{(i)},\qquad
     c^{(i)} \leftarrow (1-\kappa)\, c^{(i)} + \kappa\, \bar c,
     \qquad c \in (\log\alpha, \beta_1, \beta_2, \log\epsilon,
     \log\lambda);

6. optionally, a rejuvenation dither of the worst member's parameters,
   :math:`\theta \mathrel{+}= \sigma_d\, \alpha_{\rm worst}\,
   \mathcal N(0, I)` (:func:`rejuvenate`).

Parameters are never copied between members (that would be PBT). A round
is one jitted function; its training costs :math:`B_{\rm tot}` member steps
in the ``"chunked"`` mode (members run one by one, or in vmapped chunks of
members with similar budgets), and :math:`M \max_i B_i` in the lock-step
``"vmap"`` mode, which is exact (and fastest) when the budgets are equal.

Consensus coordinates are the theory's: log for the log-parametrised
coefficients (α, ε, λ), and the value itself, linearly, for β1 and β2 (not
the controller's logit ``z``). Coefficients pinned at one value (λ = 0,
σ = 0) are left alone.

:func:`ensemble` is the reference ``AEEnsemble``: a per-step consensus with
weights :math:`\mathrm{softmax}(-\beta (L - \min L))`.

Example::

  from ae_jax import swarm
  cfg = swarm.SwarmConfig(pop_size=4, rounds=6, total_steps=4000,
                          min_steps=400, beta=5.0, kappa=0.05)
  family = swarm.ae_adamw_family(learning_rate=3e-4, weight_decay=1e-4)
  priors = swarm.reference_priors(4, learning_rate=3e-4)
  pop = swarm.init_population(key, init_params, family, priors)
  data = swarm.Data(x_train, y_train, x_val, y_val)
  pop, history = swarm.run(cfg, family, loss_fn, pop, data, key)
  swarm.plot_history(history)
"""

from ae_jax.swarm._config import (CONSENSUS, MODES, SwarmConfig, Family, ae_adamw_family, self_tuning_family, SELF_TUNING_LEAK, adamw_family, reference_priors)
from ae_jax.swarm._population import (Population, Data, pop_size, member, init_population)
from ae_jax.swarm._training import (member_runner, train, scores)
from ae_jax.swarm._selection import (SELECTIONS, selection_scores, swarm_weights, allocate_budgets)
from ae_jax.swarm._consensus import (nudge, consensus, member_coefficients, rejuvenate)
from ae_jax.swarm._rounds import (RoundLog, make_round, History, initial_budgets, run, plot_history)
from ae_jax.swarm._sharding import (auto_mesh, shard_population)
from ae_jax.swarm._ensemble import (EnsembleInfo, Ensemble, ensemble, ensemble_step)
from ae_jax.swarm._toy import (init_mlp, mlp, mse_loss, regression_data)

__all__ = [
    "CONSENSUS",
    "Data",
    "Ensemble",
    "EnsembleInfo",
    "Family",
    "History",
    "MODES",
    "Population",
    "RoundLog",
    "SELECTIONS",
    "SwarmConfig",
    "adamw_family",
    "ae_adamw_family",
    "allocate_budgets",
    "auto_mesh",
    "consensus",
    "ensemble",
    "ensemble_step",
    "init_mlp",
    "init_population",
    "initial_budgets",
    "make_round",
    "member",
    "member_coefficients",
    "member_runner",
    "mlp",
    "mse_loss",
    "nudge",
    "plot_history",
    "pop_size",
    "reference_priors",
    "regression_data",
    "rejuvenate",
    "run",
    "scores",
    "selection_scores",
    "self_tuning_family",
    "SELF_TUNING_LEAK",
    "shard_population",
    "swarm_weights",
    "train",
]
