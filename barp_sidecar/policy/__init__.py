"""The routing policy: prompt encoder h(x), network π(a|x,w), checkpoints, and the serving registry."""
