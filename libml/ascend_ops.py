"""The TensorFlow op types the Ascend 910 runs: the installed CANN's own list, else the shipped one.

The TF Adapter puts a node on the device only if its op type is a key of CANN's
`npu_supported_ops.json` (tf_adapter/util/npu_ops_identifier.cc); other nodes silently run on the
host. On an Ascend machine the check reads that file where the adapter does; elsewhere it uses
`libml/ascend_ops.txt`, the keys found in both CANN 20.1 and 8.1.RC1 (its header names the
sources), which also says which kernel library holds each op (AI Core or AI CPU).
"""

import collections
import json
import os

from libml.utils import UserError

SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'ascend_ops.txt')
# Where the adapter looks: $ASCEND_OPP_PATH, or this default when it is unset
# (npu_ops_identifier.cc).
DEFAULT_OPP_PATH = '/usr/local/Ascend/opp'
# The file under the OPP folder: older CANN layouts (20.x, 5.x) first, then newer ones (6.x on).
JSON_LAYOUTS = ('framework/built-in/tensorflow/npu_supported_ops.json',
                'built-in/framework/tensorflow/npu_supported_ops.json')
# The engine tags of the shipped list whose kernels run on the card's ARM cores (AI CPU):
# 'aicpu' in every release read, 'aicpu-20.1' in CANN 20.1 only (AI Core from 2022 on).
AI_CPU_ENGINES = ('aicpu', 'aicpu-20.1')

OpList = collections.namedtuple('OpList', 'op_types engines source')
OpList.__doc__ = """`op_types`: the op types the device takes; `engines`: op type -> engine tag
(shipped list only); `source`: which file, in words, for messages."""


def installed_json(environ=None):
    """The installed CANN's npu_supported_ops.json where the adapter would read it, or ''."""
    environ = os.environ if environ is None else environ
    opp = environ.get('ASCEND_OPP_PATH') or DEFAULT_OPP_PATH
    for layout in JSON_LAYOUTS:
        path = os.path.join(opp, layout)
        if os.path.isfile(path):
            return path
    return ''


def load(environ=None):
    """The installed CANN's list when there is one (see `installed_json`), else the shipped list.

    The engine tags always come from the shipped list: CANN's json does not say where an op runs.
    """
    shipped = read_shipped()
    path = installed_json(environ)
    if not path:
        return shipped
    return OpList(read_json(path), shipped.engines, 'the installed CANN\'s %s' % path)


def read_json(path):
    """The op types (keys) of an npu_supported_ops.json; UserError when it does not parse."""
    try:
        with open(path) as f:
            ops = json.load(f)
    except (IOError, OSError, ValueError) as e:
        raise UserError('cannot read the NPU op list %s (%s); repair the CANN install or set '
                        'ASCEND_OPP_PATH to its opp folder' % (path, ' '.join(str(e).split())))
    if not isinstance(ops, dict) or not ops:
        raise UserError('the NPU op list %s holds no op types; repair the CANN install or set '
                        'ASCEND_OPP_PATH to its opp folder' % path)
    return frozenset(ops)


def read_shipped(path=SHIPPED):
    """The shipped list: 'OpType<TAB>engine' lines after '#' header lines."""
    engines = {}
    with open(path) as f:
        for line in f:
            if line.strip() and not line.startswith('#'):
                op_type, engine = line.split()
                engines[op_type] = engine
    source = 'libml/%s (CANN 20.1 and 8.1.RC1, %d op types)' % (os.path.basename(path),
                                                                  len(engines))
    return OpList(frozenset(engines), engines, source)
