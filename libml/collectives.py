"""Packed cross-worker collectives: many tensors through one all-reduce.

Under MultiWorkerMirroredStrategy each collective is a round trip between the workers, so a step
sends what must cross them (gradients, batch-norm moments, the logged scalars) in one flat tensor,
not one collective per variable. One collective per step also fixes their order on
every worker, which NCCL needs on GPUs (two workers launching two collectives in different orders
wait for each other for ever).
"""

import tensorflow.compat.v1 as tf


def pack(tensors, dtype=tf.float32):
    """The tensors flattened, cast to `dtype` and concatenated into one vector."""
    return tf.concat([tf.reshape(tf.cast(t, dtype), [-1]) for t in tensors], axis=0)


def unpack(vector, like):
    """Inverse of `pack`: pieces of `vector` shaped and typed as the tensors `like`."""
    sizes = [int(t.shape.num_elements()) for t in like]
    pieces = tf.split(vector, sizes) if len(sizes) > 1 else [vector]
    return [tf.cast(tf.reshape(piece, tf.shape(t)), t.dtype.base_dtype)
            for piece, t in zip(pieces, like)]


def strategy_sum(strategy, vector):
    """`vector` summed over every replica of `strategy`, in one collective; the value on this
    process's first replica (each worker has one)."""
    total = strategy.extended.call_for_each_replica(
        lambda: tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, tf.identity(vector)))
    return strategy.experimental_local_results(total)[0]


def mean_over_workers(strategy, tensors, workers):
    """The tensors (static shapes) averaged over the workers, through one float32 all-reduce."""
    tensors = list(tensors)
    if not tensors:
        return []
    return unpack(strategy_sum(strategy, pack(tensors)) / float(workers), tensors)


def broadcast_from_first(strategy, variables, rank):
    """An op giving every worker rank 0's values of `variables`: one float64 sum in which the
    other ranks add zeros (exact for floats, and for integer counters below 2**53)."""
    mine = pack(variables, tf.float64) * (1. if rank == 0 else 0.)
    values = unpack(strategy_sum(strategy, mine), variables)
    return tf.group(*[tf.assign(v, value) for v, value in zip(variables, values)])
