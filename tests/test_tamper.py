"""tutorlib.checks.tamper: submissions that reach into the testing machinery are flagged."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from tutorlib.checks.tamper import scan_notebook, scan_source

ROOT = Path(__file__).resolve().parent.parent

HOSTILE = {
    "builtins": "import builtins\nbuiltins.isinstance = lambda *a: True",
    "builtin via dict": "__builtins__.__dict__['len'] = lambda x: 0",
    "allclose": "import torch\ntorch.allclose = lambda *a, **k: True",
    "testing": "torch.testing.assert_close = lambda *a, **k: None",
    "checks module": "checks.check_attention = lambda *a, **k: print('OK')",
    "checks rebound": "class checks:\n    pass",
    "checks by import": "from types import SimpleNamespace as checks",
    "assertion": "AssertionError = Exception",
    "eq": "class Anything(float):\n    def __eq__(self, other):\n        return True",
    "eq patched": "torch.Tensor.__eq__ = lambda a, b: True",
    "setattr": "setattr(torch, 'allclose', lambda *a, **k: True)",
    "exec": "exec('torch.allclose = lambda *a, **k: True')",
    "tutorlib": "import tutorlib.checks.generative as g\ng.expect_close = print",
    "tutorlib patched": "tutorlib.checks.expect_close = print",
    "traceback": "get_ipython().showtraceback = lambda *a, **k: None",
    "ipython": "import IPython\nIPython.core.interactiveshell.InteractiveShell.showtraceback = 0",
    "alias": "import os as torch",
    "ctypes": "import ctypes\nctypes.string_at(0)",
    "global": "def f():\n    global checks\n    checks = None",
    "delete": "del torch.allclose",
    "magic": "%env X=1",
    "shell": "!rm -rf ~",
    "private reference": "def f(x):\n    return checks._layer_norm(x, x.shape[-1:])",
    "private import": "from tutorlib.checks.foundations import _pe_variant",
    "private by getattr": "f = getattr(checks, '_pe' + '_variant')",
    "torch._C": "y = torch._C._nn.scaled_dot_product_attention(q, k, v)",
    "torch.ops": "y = torch.ops.aten.native_layer_norm(x, [4], None, None, 1e-5)[0]",
    "private module": "import torch._C as C",
    "runpy": "import runpy\nm = runpy.run_path(tutorlib.layers.__file__)",
    "reload": "import importlib\nimportlib.reload(tutorlib.layers)",
    "frames": "import sys\nf = sys._getframe(1).f_locals",
    "traceback frames": (
        "try:\n    1 / 0\nexcept Exception as e:\n    f = e.__traceback__.tb_frame.f_back"
    ),
    "last error": "import sys\nprint(sys.last_value.__dict__)",
    "environment": "import os\nseed = os.environ['TUTORLIB_HIDDEN_SEED']",
    "profiler": "import sys\nsys.setprofile(None)",
    "threads": "import threading",
    "tensor subclass": (
        "class T(torch.Tensor):\n    @classmethod\n"
        "    def __torch_function__(cls, f, t, a=(), k=None):\n        return True"
    ),
    "checks under another name": "m = checks\nsetattr(m, 'test_softmax', print)",
    "self as checks": "self = checks\nsetattr(self, 'test_softmax', print)",
    "setattr on a class": (
        "class A:\n    def f(self):\n        setattr(type(self), '__eq__', lambda a, b: True)"
    ),
    "setattr of a dunder on self": (
        "class A:\n    def f(self):\n        setattr(self, '__class__', torch.Tensor)"
    ),
    "vars of a module": "import tutorlib.checks.draw as d\nseed = vars(d)['_SE' + 'ED']",
    "gc beyond collect": "import gc\nrefs = gc.get_referrers(checks)",
    "gc under another name": "import gc as g\nobjects = g.get_objects()",
    "from gc": "from gc import get_objects",
    "types beyond SimpleNamespace": "import types\nf = types.FunctionType(code, {})",
    "proc": "seed = open('/proc/self/environ').read()",
    "another module as F": "from torch.nn import init as F",
    "another module assigned to F": "F = nn.init",
    "rebinds by a loop": "for checks in [SimpleNamespace(check_embed=print)]:\n    pass",
    "rebinds by with": "with contextlib.nullcontext(None) as checks:\n    pass",
    "rebinds by except": "try:\n    1 / 0\nexcept Exception as torch:\n    pass",
    "rebinds by match": "match 1:\n    case checks:\n        pass",
    "self in a method": "class A:\n    def f(self):\n        self = checks\n        self.x = 1",
    "the machinery as checks": "from tutorlib.checks import integrity as checks",
}

HONEST = {
    "attention": (
        "def attention(q, k, v, mask=None):\n"
        "    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])\n"
        "    if mask is not None:\n"
        "        scores = scores.masked_fill(~mask, float('-inf'))\n"
        "    return torch.softmax(scores, dim=-1) @ v"
    ),
    "numpy": "import numpy as np\nx = np.zeros(3)\nx[0] = 1.0",
    "reimport checks": "from tutorlib import checks",
    "own class": (
        "class Cache:\n    def __init__(self):\n        self.keys = []\n"
        "    def __len__(self):\n        return len(self.keys)"
    ),
    "comparison in code": "ok = torch.equal(a, b) and a.shape == b.shape",
    "timing magic": "%timeit attention(q, k, v)\nout = attention(q, k, v)",
    "functional": "from torch import nn\ny = F.relu(nn.Linear(3, 4)(x)).softmax(dim=-1)",
    "own private helper": "def _helper(x):\n    return x._version if False else x",
    "setattr in a module": (
        "class Stack(nn.Module):\n    def __init__(self, n):\n        super().__init__()\n"
        "        for i in range(n):\n            setattr(self, f'layer{i}', nn.Linear(4, 4))"
    ),
    "vars of a config": "settings = vars(config)",
    "the class's name": "class A:\n    def __repr__(self):\n        return self.__class__.__name__",
    "type name of a value": "print(x.__class__.__name__)",
    "own attributes": "class A:\n    def update(self, **kw):\n        self.__dict__.update(kw)",
    "free memory": "import gc\ngc.collect()",
    "namespace": "from types import SimpleNamespace\ncfg = SimpleNamespace(d=4)",
    "namespace by module": "import types\ncfg = types.SimpleNamespace(d=4)",
    "a variable named types": "types = ['a', 'b']\nprint(types)",
    "a dtype kept": "dtype = torch.float32\ndtype = torch.float64",
    "functional spelt the other way": "from torch.nn import functional as F",
    "the setup's imports again": "from tutorlib.checks import vision as checks",
    "functional by assignment": "F = nn.functional\nG = torch.nn.functional",
    "a local named F": "def f(x):\n    B, T, F = x.shape\n    return x.view(B * T, F)",
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_code_is_flagged(name: str) -> None:
    findings = scan_source(HOSTILE[name])
    assert findings, f"{name!r} was not flagged"
    assert all(f.line >= 1 and f.review for f in findings)


def test_code_that_does_not_parse_is_noted_not_put_up_for_review() -> None:
    (finding,) = scan_source("def f(:\n    pass")
    assert "cannot be parsed" in finding.what and not finding.review


@pytest.mark.parametrize("name", list(HONEST))
def test_honest_code_is_not_flagged(name: str) -> None:
    assert scan_source(HONEST[name]) == []


def test_no_solution_in_the_course_is_flagged() -> None:
    notebooks = sorted((ROOT / "solutions").rglob("*.ipynb"))
    assert len(notebooks) >= 12
    for path in notebooks:
        assert scan_notebook(path) == {}, path.relative_to(ROOT)


def test_a_notebook_report_names_the_answer_cell(tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    answer = nbformat.v4.new_code_cell("x = 1\ntorch.allclose = lambda *a, **k: True")
    answer.metadata["nbgrader"] = {"solution": True, "grade_id": "attention"}
    course_cell = nbformat.v4.new_code_cell("from tutorlib import checks")  # restored by nbgrader
    course_cell.metadata["nbgrader"] = {"locked": True, "grade_id": "setup"}
    test_cell = nbformat.v4.new_code_cell("checks = None")
    test_cell.metadata["nbgrader"] = {"grade": True, "solution": False, "grade_id": "test"}
    added = nbformat.v4.new_code_cell("import builtins\nbuiltins.print = None")  # no metadata
    nb.cells = [course_cell, answer, test_cell, added]
    nbformat.write(nb, tmp_path / "submission.ipynb")
    report = scan_notebook(tmp_path / "submission.ipynb")
    assert list(report) == ["attention", "cell 3"]  # a cell the learner added is read too
    assert report["attention"][0].line == 2
    assert "torch.allclose" in report["attention"][0].what


@pytest.mark.parametrize("content", [b"not json", b"\xff\xfe", json.dumps([1, 2]).encode()])
def test_a_file_that_is_not_a_notebook_is_one_finding(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.ipynb"
    path.write_bytes(content)
    (finding,) = scan_notebook(path)["notebook"]
    assert "not a readable notebook" in finding.what


# --- verify_intact: the checks notice a patched machinery --------------------------------------


def _patches():
    import builtins

    import torch
    from torch import nn

    from tutorlib.checks import foundations

    return {
        "torch.allclose": (torch, "allclose", lambda *a, **k: True),
        "torch.testing.assert_close": (torch.testing, "assert_close", lambda *a, **k: None),
        # a wrapper that behaves like the original (pytest itself needs a working isinstance)
        "builtins.isinstance": (builtins, "isinstance", lambda *a, _f=isinstance: _f(*a)),
        "torch.Tensor.__eq__": (torch.Tensor, "__eq__", lambda a, b: True),
        "torch.Tensor.var": (torch.Tensor, "var", lambda x, *a, **k: torch.ones(())),
        "torch.nn.modules.normalization.LayerNorm.forward": (
            nn.LayerNorm,
            "forward",
            lambda s, x: x,
        ),
        "tutorlib.checks.foundations.expect_close": (
            foundations,
            "expect_close",
            lambda *a, **k: None,
        ),
    }


def _layer_norm(x, weight, bias, eps=1e-5):  # right
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / (var + eps) ** 0.5 * weight + bias


@pytest.mark.parametrize("name", list(_patches()))
def test_a_passing_check_fails_when_the_machinery_was_patched(monkeypatch, name: str) -> None:
    from tutorlib.checks import ExerciseError, foundations, tampered

    foundations.check_layer_norm(_layer_norm)  # intact: passes
    owner, attribute, replacement = _patches()[name]
    monkeypatch.setattr(owner, attribute, replacement, raising=False)
    assert name in tampered(), f"patching {name} went unnoticed: {tampered()}"
    with pytest.raises(ExerciseError, match="testing machinery was changed"):
        foundations.check_layer_norm(_layer_norm)
    monkeypatch.undo()
    assert tampered() == []


def test_a_method_under_a_new_name_is_not_tampering_and_an_override_is(monkeypatch) -> None:
    from torch import nn

    from tutorlib.checks import foundations, tampered

    # Hugging Face's transformers sets nn.Module.smart_apply when it is imported
    monkeypatch.setattr(nn.Module, "smart_apply", lambda self, fn: self, raising=False)
    assert tampered() == []
    foundations.check_layer_norm(_layer_norm)
    monkeypatch.setattr(nn.Linear, "__call__", lambda self, x: x, raising=False)
    assert "torch.nn.modules.linear.Linear.__call__" in tampered()


def test_a_global_module_hook_counts_as_tampering() -> None:
    from torch import nn

    from tutorlib.checks import ExerciseError, foundations, tampered

    handle = nn.modules.module.register_module_forward_hook(lambda module, args, out: out)
    try:
        assert any("hooks" in name for name in tampered())
        with pytest.raises(ExerciseError, match="testing machinery was changed"):
            foundations.check_layer_norm(_layer_norm)
    finally:
        handle.remove()
    assert tampered() == []
