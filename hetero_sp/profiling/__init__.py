"""Measuring what the planner's cost model needs: times of the real model blocks and of the
collectives over every group size, fitted into a :class:`hetero_sp.planner.Profile`
(``hetero-sp profile``). It runs torch and a process group, so it sits above the model and the
planner: it may import both, and neither imports it."""
