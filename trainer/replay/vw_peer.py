"""Vowpal Wabbit as a peer learner under the same replay (``barp-trainer replay --peer vw``).

Owns the translation of replay events into VW's ADF text format; ``vowpalwabbit`` (9.x) is an optional
bench dependency (``pip install -e '.[bench]'``), imported only when a VW peer is built, never by the
sidecar or the trainer service. Configuration: ``--cb_explore_adf --squarecb -q SA`` (shared namespace S
= the prompt embedding and, under random preferences, w_q; action namespace A = the model), cost = −reward,
seeded. VW samples its own exploration distribution with the replay's RNG; the propensity is the
probability VW gave the chosen model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from barp_sidecar.policy.reward import reward

DEFAULT_ARGUMENTS = "--cb_explore_adf --squarecb -q SA --quiet"


def vowpalwabbit_available() -> bool:
    try:
        import vowpalwabbit  # noqa: F401
    except ImportError:
        return False
    return True


class VowpalWabbitRouter:
    """A VW ``--cb_explore_adf`` workspace over the replay's arms."""

    def __init__(
        self, arms: tuple[str, ...], seed: int, tau_usd: float, arguments: str = DEFAULT_ARGUMENTS
    ) -> None:
        try:
            import vowpalwabbit
        except ImportError as exc:
            raise RuntimeError(
                "the VW peer needs the optional package vowpalwabbit: pip install -e '.[bench]'"
            ) from exc
        self.name = "vw-squarecb"
        self.arms = arms
        self.tau_usd = tau_usd
        self.rng = np.random.default_rng([seed, 1])
        self.workspace: Any = vowpalwabbit.Workspace(f"{arguments} --random_seed {seed}")
        self._actions = [f"|A arm{i}" for i in range(len(arms))]

    @staticmethod
    def _shared(x: np.ndarray, quality_weight: float | None) -> str:
        features = " ".join(f"e{i}:{v:.5f}" for i, v in enumerate(x))
        if quality_weight is not None:
            features += f" wq:{quality_weight:.4f} wc:{1.0 - quality_weight:.4f}"
        return f"shared |S {features}"

    def _pmf(self, shared: str) -> np.ndarray:
        pmf = np.asarray(self.workspace.predict([shared, *self._actions]), dtype=np.float64)
        return pmf / pmf.sum()

    def choose(self, event_index: int, x: np.ndarray, quality_weight: float) -> tuple[int, float]:
        pmf = self._pmf(self._shared(x, quality_weight))
        arm = int(self.rng.choice(len(pmf), p=pmf))
        return arm, float(pmf[arm])

    def observe(
        self,
        event_index: int,
        x: np.ndarray,
        quality_weight: float,
        arm: int,
        propensity: float,
        quality: float,
        cost_usd: float,
    ) -> None:
        cost = -reward(quality, cost_usd, quality_weight, self.tau_usd)  # VW minimises cost
        lines = [self._shared(x, quality_weight)]
        for i, action in enumerate(self._actions):
            lines.append(f"0:{cost:.6f}:{propensity:.6f} {action}" if i == arm else action)
        self.workspace.learn(lines)

    def greedy_arms(self, xs: np.ndarray, quality_weight: float) -> np.ndarray:
        # SquareCB gives its greedy (lowest predicted cost) model the largest probability.
        return np.asarray(
            [int(np.argmax(self._pmf(self._shared(x, quality_weight)))) for x in xs], dtype=np.int64
        )

    def published_versions(self) -> int:
        return 0

    def change_pool(self, names: tuple[str, ...]) -> None:
        raise ValueError("the Vowpal Wabbit peer has a fixed set of actions (no model-pool schedule)")

    def close(self) -> None:
        self.workspace.finish()
