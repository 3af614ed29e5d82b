"""USB's own FlexMatch and FreeMatch functions (PyTorch, CPU) on the cases of tests/usb_cases.py,
beside the values there (which tests/test_flexmatch_freematch.py checks our graph against).

Not a test and not a project requirement: run it with a Python that has torch, on a checkout of
microsoft/Semi-supervised-learning (only semilearn/algorithms/{flexmatch,freematch} and
semilearn/core/criterions are read; the rest of the package is stubbed):
    python tests/usb_agreement.py USB_DIR
Prints one line per quantity and exits 1 when one differs by more than 1e-5.
"""

import importlib
import os
import sys
import types

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import usb_cases as cases  # noqa: E402


def _stub(name, path=None, **attributes):
    module = types.ModuleType(name)
    if path is not None:
        module.__path__ = [path]
    module.__dict__.update(attributes)
    sys.modules[name] = module
    return module


def load_usb(root):
    """USB's flexmatch/utils.py, freematch/utils.py and freematch.py, without the heavy package."""
    algorithms = os.path.join(root, 'semilearn', 'algorithms')
    hook = type('MaskingHook', (object,), {'__init__': lambda self, *a, **k: None})
    _stub('semilearn', os.path.join(root, 'semilearn'))
    _stub('semilearn.core', os.path.join(root, 'semilearn', 'core'), AlgorithmBase=object)
    registry = types.SimpleNamespace(register=lambda name: lambda cls: cls)
    _stub('semilearn.core.utils', ALGORITHMS=registry)
    _stub('semilearn.algorithms', algorithms)
    _stub('semilearn.algorithms.hooks', MaskingHook=hook, PseudoLabelingHook=hook)
    _stub('semilearn.algorithms.utils', SSL_Argument=None, str2bool=None, concat_all_gather=None)
    for package in ('flexmatch', 'freematch'):
        _stub('semilearn.algorithms.' + package, os.path.join(algorithms, package))
    return (importlib.import_module('semilearn.algorithms.flexmatch.utils'),
            importlib.import_module('semilearn.algorithms.freematch.freematch'),
            importlib.import_module('semilearn.core.criterions'))


def _tensor(values):
    return torch.tensor(np.array(values, np.float64))


def flexmatch_values(flex_utils, criterions, warmup):
    """FlexMatchThresholdingHook.masking (then .update), the masked CE of FlexMatch.train_step."""
    case = cases.FLEX
    hook = flex_utils.FlexMatchThresholdingHook(len(case['status']), cases.NCLASS, warmup)
    hook.selected_label = torch.tensor(case['status'])
    hook.classwise_acc = _tensor(case['beta'])
    weak = _tensor(case['weak'])
    algorithm = types.SimpleNamespace(p_cutoff=cases.TAU)
    mask = hook.masking(algorithm, weak, torch.tensor(case['index']), softmax_x_ulb=False)
    strong = torch.log(_tensor(case['strong']))
    xeu = criterions.consistency_loss(strong, weak.argmax(1), 'ce', mask)
    return dict(mask=(mask, case['mask']), status=(hook.selected_label, case['new_status']),
                beta=(hook.classwise_acc, case['new_beta'][warmup]), xeu=(xeu, case['xeu']))


def freematch_values(free_module, criterions):
    """FreeMatchThresholingHook.masking (after its .update), entropy_loss, the masked CE."""
    case = cases.FREE
    hooks = sys.modules['semilearn.algorithms.freematch.utils']
    hook = hooks.FreeMatchThresholingHook(cases.NCLASS, case['momentum'])
    algorithm = types.SimpleNamespace(distributed=False, world_size=1, use_quantile=False,
                                      clip_thresh=False)
    weak, strong = torch.log(_tensor(case['weak'])), torch.log(_tensor(case['strong']))
    mask = hook.masking(algorithm, weak)
    fairness, _ = free_module.entropy_loss(mask, strong, hook.p_model, hook.label_hist)
    xeu = criterions.consistency_loss(strong, weak.argmax(1), 'ce', mask)
    return dict(tau=(hook.time_p, case['tau']), p_model=(hook.p_model, case['p_model']),
                label_hist=(hook.label_hist, case['label_hist']), mask=(mask, case['mask']),
                fairness=(fairness, case['fairness']), xeu=(xeu, case['xeu']))


def main(root):
    flex_utils, free_module, criterions = load_usb(root)
    results = [('flexmatch warm-up', flexmatch_values(flex_utils, criterions, True)),
               ('flexmatch no warm-up', flexmatch_values(flex_utils, criterions, False)),
               ('freematch', freematch_values(free_module, criterions))]
    worst = 0.
    for label, values in results:
        for name, (usb, expected) in values.items():
            usb = np.asarray(usb.detach().numpy() if torch.is_tensor(usb) else usb, np.float64)
            difference = float(np.abs(usb - np.asarray(expected, np.float64)).max())
            worst = max(worst, difference)
            print('%-22s %-10s USB %-40s max |USB - case| %.2g'
                  % (label, name, np.array2string(usb, precision=6), difference))
    print('largest difference %.2g' % worst)
    return 0 if worst <= 1e-5 else 1


if __name__ == '__main__':
    sys.exit(main(sys.argv[1]))
