"""One training process for tests/test_distributed.py: the library's own per-replica step
(train.training_graph, the device's session and barrier) from fixed initial
weights, then every variable saved to OUT-RANK.npz and the step's collectives to OUT-RANK.json.

    python distributed_worker.py OUT ML_DATA DATASET METHOD ARCH BATCH STEPS REPLICAS AUGMENT
(several workers: TF_CONFIG, as scripts/launch.py sets it)
"""
import json
import os
import sys
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import libml  # noqa: E402,F401  (first: it sets TensorFlow's environment before TF loads)

import numpy as np  # noqa: E402
import tensorflow.compat.v1 as tf  # noqa: E402
import methods  # noqa: E402
from libml import data, layers, npu_config, train  # noqa: E402


def initial_value(variable):
    """The same start on every rank and in every setup: drawn from the variable's name."""
    name = variable.op.name.replace('/ExponentialMovingAverage', '')
    rng = np.random.RandomState(zlib.crc32(name.encode()))
    shape = variable.shape.as_list()
    if 'moving_variance' in name:
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    return rng.normal(0, 0.3, shape).astype(np.float32)


def ancestors(op):
    """Every op `op` depends on, through data and control inputs."""
    todo, seen = [op], set()
    while todo:
        op = todo.pop()
        if op not in seen:
            seen.add(op)
            todo += [t.op for t in op.inputs] + list(op.control_inputs)
    return seen


def step_collectives(ops):
    """The collectives a step runs (input size, the collectives it waits for), whether every
    batch-norm moment feeds one, whether every logged scalar and the stop vote come out of one,
    and how many trainable variables there are."""
    found = [op for op in ancestors(ops['train_op']) if op.type.startswith('Collective')]
    waits = {op: ancestors(op) for op in found}
    moments = [value.op for _, value, _ in tf.get_collection(layers.BN_UPDATES)]
    return dict(collectives=[dict(name=op.name, size=int(op.inputs[0].shape.num_elements()),
                                  after=sorted(o.name for o in found if o is not op and o in waits[op]))
                             for op in sorted(found, key=lambda op: op.name)],
                moments_packed=all(any(m in waits[op] for op in found) for m in moments),
                scalars_packed=all(any(op in ancestors(value.op) for op in found)
                                   for value in list(ops['losses'].values()) + [ops['stop_vote']]),
                trainable=len(tf.trainable_variables('classify')))


def main(out, root, dataset_id, method_name, arch, batch, steps, replicas, augment):
    tf.disable_v2_behavior()
    device = npu_config.setup('cpu', 'fp32', log=lambda *a: None, replicas=int(replicas))
    dataset = data.resolve(dataset_id, root=root)
    method = methods.get(method_name)
    hp = dict(method=method_name, arch=arch, filters=4, repeat=1, scales=1, bn_momentum=0.9,
              batch=int(batch), lr=0.01, wd=0.5, ema=0.9, beta=0.75, w_match=1., warmup_kimg=0.,
              T=0.5, tsa='none', tsa_rule='reference', percent_mask=-1., augment=augment,
              eval_batch=8, total_nimg=1 << 20)
    hp.update((spec.name, spec.default) for spec in method.FLAGS if spec.name not in hp)
    hp.update(train_kimg=1024, unlabeled_size=data.unlabeled_size(dataset))  # FixMatch family
    with tf.Graph().as_default() as graph:
        ops = train.training_graph(dataset, hp, device, method, seed=1)
        with device.scope():
            start = [tf.assign(v, initial_value(v)) for v in tf.global_variables()
                     if v.op.name.startswith('classify/') and '/Adam' not in v.op.name]
        names = [v.op.name for v in tf.global_variables()]
        collectives = step_collectives(ops)
        with device.session(graph) as session:
            session.run(tf.global_variables_initializer())
            session.run(start)
            for _ in range(int(steps)):
                session.run(ops['train_op'])
            values = session.run(tf.global_variables())
            session.run(ops['barrier'])
    np.savez('%s-%d.npz' % (out, device.cluster.rank), **dict(zip(names, values)))
    with open('%s-%d.json' % (out, device.cluster.rank), 'w') as f:
        json.dump(collectives, f)
    device.leave()


if __name__ == '__main__':
    main(*sys.argv[1:])
