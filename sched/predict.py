"""Work predictions for batches that shrink as samples exit (from exit probabilities only).

For a batch of ``s`` samples alive at op position ``p``, each survives to op ``i``
with probability ``alive[i] / alive[p]`` independently, so the batch size at op ``i``
is Binomial. Tables (Python lists, for fast lookups in decisions):

* ``U[p][s][k]``: expected NPU seconds for ops ``p .. p+k-1`` (an op with nobody
  left costs nothing). ``erem[p][s] = U[p][s][-1]``: expected time until it drains.
* ``M[p][s][k]``: the same seen by one member that is still in the batch at op
  ``p+k-1`` (the others are Binomial(s-1)): the end time of that op for it.
* ``el[p][s]``: expected remaining latency of a member alive at ``p``.
* ``elpre[n][p]``: for a fresh batch of ``n`` starting at op 0, the sum over ops
  ``i < p`` of P(exit right after ``i``) times that op's expected end time.
* ``gi[p][s] = (index, k, T, e)``: the exit-aware priority index of a batch of ``s``
  at ``p`` (a Gittins/Sevcik index): the largest ratio of expected completions
  ``e = s * (1 - alive[p+k]/alive[p])`` to expected NPU time ``T = U[p][s][k]`` over
  the horizons ``k`` (ops ``p .. p+k-1``), with the best ``k``.

``exit_blind=True`` predicts as if no sample exits (LazyBatching, PREMA).
"""
from __future__ import annotations

import numpy as np

__all__ = ["Predictor", "predictor"]

_CACHE: dict = {}


class Predictor:
    def __init__(self, lat: np.ndarray, alive: np.ndarray, exit_at: np.ndarray, exit_blind: bool = False):
        B1, n = lat.shape
        B = B1 - 1
        if exit_blind:
            alive = np.ones(n + 1)
            exit_at = np.zeros(n)
            exit_at[-1] = 1.0
        self.n_ops, self.b_max = n, B
        self.alive = alive.tolist()
        U, M, el = [], [], []
        for p in range(n + 1):
            k = n - p
            ap = alive[p]
            pi = alive[p:n] / ap if ap > 0 else np.zeros(k)
            L = lat[:, p:n]                                   # [B+1, k]
            pmf = np.zeros((B + 1, k))
            pmf[0] = 1.0                                      # Binomial(0, pi)
            eu = np.zeros((B + 1, k))                         # E[lat(Bin(s, pi))]
            em = np.zeros((B + 1, k))                         # E[lat(1 + Bin(s-1, pi))]
            for s in range(1, B + 1):
                em[s] = (pmf[:s] * L[1:s + 1]).sum(0)         # pmf is Bin(s-1)
                nxt = np.zeros_like(pmf)
                nxt[:s + 1] = pmf[:s + 1] * (1 - pi)
                nxt[1:s + 1] += pmf[:s] * pi
                pmf = nxt
                eu[s] = (pmf[:s + 1] * L[:s + 1]).sum(0)
            cu = np.concatenate([np.zeros((B + 1, 1)), np.cumsum(eu, 1)], 1)
            cm = np.concatenate([np.zeros((B + 1, 1)), np.cumsum(em, 1)], 1)
            U.append(cu.tolist())
            M.append(cm.tolist())
            cond = exit_at[p:n] / ap if ap > 0 else np.zeros(k)
            el.append((cm[:, 1:] * cond).sum(1).tolist() if k else [0.0] * (B + 1))
        self.U, self.M, self.el = U, M, el
        gi = []
        for p in range(n + 1):
            k = n - p
            row = [(0.0, 0, 0.0, 0.0)]
            if k == 0 or alive[p] <= 0:
                gi.append(row * (B + 1))
                continue
            frac = 1.0 - alive[p + 1:n + 1] / alive[p]          # P(gone by the end of op p+j), j = 0..k-1
            cu = np.asarray(U[p])[:, 1:]                        # [B+1, k]
            for s_ in range(1, B + 1):
                e = s_ * frac
                with np.errstate(divide="ignore", invalid="ignore"):
                    r = np.where(cu[s_] > 0, e / cu[s_], 0.0)
                j = int(np.argmax(r))
                row.append((float(r[j]), j + 1, float(cu[s_, j]), float(e[j])))
            gi.append(row)
        self.gi = gi
        self.erem = [[U[p][s][-1] for s in range(B + 1)] for p in range(n + 1)]
        cm0 = np.asarray(M[0])                                # [B+1, n+1]
        contrib = cm0[:, 1:] * exit_at[None, :]               # exit right after op i at end time of op i
        self.elpre = np.concatenate([np.zeros((B + 1, 1)), np.cumsum(contrib, 1)], 1).tolist()


def predictor(plan, exit_blind: bool = False) -> Predictor:
    """A (cached) predictor for a :class:`~fluidnpu.sim.serving.plan.ModelPlan`."""
    key = (plan.lat.tobytes(), plan.lat.shape, plan.alive.tobytes(), exit_blind)
    p = _CACHE.get(key)
    if p is None:
        if len(_CACHE) > 32:
            _CACHE.clear()
        p = _CACHE[key] = Predictor(plan.lat, plan.alive, plan.exit_at, exit_blind)
    return p
