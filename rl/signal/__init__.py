"""GRPO that keeps its learning signal (method.md §5), through verl's own extension points.

- :mod:`rl.signal.groups`: what a finished group says (signal, mean |advantage|, filter verdicts).
- :mod:`rl.signal.replay`: the selective-replay store's bookkeeping.
- :mod:`rl.signal.curriculum`: the pass-rate curriculum (a ``data.sampler``).
- :mod:`rl.signal.buffer`: verl's v1 replay buffer with filtering, budget, replay and measurement
  (``trainer.v1.sampler.custom_sampler``).
- :mod:`rl.signal.config`: the ``hardmode.signal`` recipe keys.
"""
