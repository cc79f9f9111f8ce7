"""A batch of experiments against the same experiment run alone, to float rounding."""

import numpy as np


def assert_batch_matches_single(batched, single, *, first_losses=None, median_atol=1e-3, mean_atol=2e-3):
    """`batched` (one experiment's result from a batched run) against `single` (the same experiment alone).

    On the CPU, XLA's matrix products (YNNPACK) round differently for different numbers of rows
    (measured on an AMD EPYC: a dense layer's output row differs in its last bits between 1 and 2
    rows, and between 2 and 64; Winograd convolutions are matrix products too), so a batched run and a
    single one agree to float32 rounding at each step, not bit for bit; an optimiser such as Adam, whose
    first steps move every pixel by about the learning rate in the direction of its gradient's sign,
    turns rounding at near-zero gradient components into visible differences at a few pixels. So:

      * `first_losses` (the batched run's first loss for this experiment, the single run's): equal to
        float32 rounding (a wrong target, key, image or weight changes them by far more);
      * the results: the median absolute difference at most `median_atol` and the mean at most
        `mean_atol` (a mixed-up experiment differs at most pixels by a large fraction of the range).
    """
    if first_losses is not None:
        np.testing.assert_allclose(np.asarray(first_losses[0]), np.asarray(first_losses[1]), rtol=1e-5, atol=1e-7)
    d = np.abs(np.asarray(batched, np.float64) - np.asarray(single, np.float64))
    assert np.median(d) <= median_atol and d.mean() <= mean_atol, (np.median(d), d.mean(), d.max())
