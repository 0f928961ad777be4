"""vLLM's API as sdlib/rollout.py uses it (the GPU backend), held against the installed vLLM.

test_rollout.py drives VLLMBackend with fake engines; this file checks that the names those
fakes stand for exist in vLLM: the classes at the import paths sdlib uses, the arguments it
passes, the attributes it reads on the outputs and the hooks of the weight-reload worker
extension. No GPU and no engine: signatures and fields are inspected and only the cheap
objects (SamplingParams, LoRARequest, EngineArgs) are built.

The CONTRACT block below is the one list of what sdlib uses of vLLM. A scan of rollout.py's
source checks that the list is complete, so a new vLLM call without an entry here fails; the
scan runs everywhere, the checks against vLLM only where vLLM imports (the ``gpu`` extra).
"""

import ast
import dataclasses
import importlib
import inspect
import re
import typing
from enum import Enum
from pathlib import Path

import pytest

from sdlib.config import TrainConfig
from sdlib.rollout import Sampling, VLLMBackend, VLLMWeightLoader

ROOT = Path(__file__).resolve().parent.parent
ROLLOUT = ROOT / "sdlib" / "rollout.py"

# ---- CONTRACT: everything sdlib uses of vLLM ------------------------------------------------
# (module, name) sdlib imports; name None for ``import vllm``
IMPORTS = {("vllm", None), ("vllm", "SamplingParams"), ("vllm.lora.request", "LoRARequest")}
# every call into vLLM: callee -> (positional arguments passed, keywords passed). The engine
# (``self.engine``) is a vllm.LLM; ``model.load_weights`` runs in each worker, on
# ``self.model_runner.model`` (VLLMWeightLoader, sdlib's ``worker_extension_cls``).
CALLS = {
    "vllm.LLM": (
        0,
        {
            "model",
            "tokenizer",
            "dtype",
            "enable_lora",
            "max_lora_rank",
            "worker_extension_cls",
            "tensor_parallel_size",
            "gpu_memory_utilization",
            "max_model_len",
            "enable_prefix_caching",
            "logprobs_mode",
        },
    ),
    "vllm.SamplingParams": (
        0,
        {"n", "temperature", "top_p", "top_k", "max_tokens", "seed", "logprobs"},
    ),
    "vllm.lora.request.LoRARequest": (3, set()),
    "vllm.LLM.generate": (2, {"lora_request", "use_tqdm"}),
    "vllm.LLM.collective_rpc": (1, {"args"}),
    "vllm.LLM.reset_prefix_cache": (0, set()),
    "model.load_weights": (0, {"weights"}),
}
# attributes read on what LLM.generate returns (VLLMBackend.to_rollouts), by class
OUTPUTS = {
    "vllm.outputs.RequestOutput": {"outputs", "prompt_token_ids"},
    "vllm.outputs.CompletionOutput": {"token_ids", "logprobs", "text", "finish_reason"},
    "vllm.logprobs.Logprob": {"logprob"},
}
PROMPT_KEYS = {"prompt_token_ids"}  # the request dicts given to LLM.generate (TokensPrompt)
FINISH_REASONS = {"stop", "length"}  # compared with CompletionOutput.finish_reason
# the model classes of the checkpoints sdlib serves (SmolLM2, R1-Distill-Qwen, Qwen3)
MODELS = [
    ("llama", "LlamaForCausalLM"),
    ("qwen2", "Qwen2ForCausalLM"),
    ("qwen3", "Qwen3ForCausalLM"),
]
# ----------------------------------------------------------------------------------------------

NO_VLLM = "vLLM is not installed (GPU only: pip install -e '.[gpu]'); only the source scan runs"


def dotted(node) -> str | None:
    """``a.b.c`` for a chain of names and attributes, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return base and f"{base}.{node.attr}"
    return None


def root(node) -> str | None:
    """The name an expression such as ``step[t].logprob`` or ``out.text.append`` starts from."""
    while isinstance(node, ast.Attribute | ast.Subscript | ast.Call):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def scan(source: str) -> dict:
    """What ``source`` uses of vLLM, in the CONTRACT's terms."""
    tree = ast.parse(source)
    imports, local = set(), {}  # local name -> vLLM module it was imported from
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports |= {(a.name, None) for a in node.names if a.name.split(".")[0] == "vllm"}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "vllm":
            imports |= {(node.module, a.name) for a in node.names}
            local |= {a.asname or a.name: node.module for a in node.names}
    calls = {}
    for node in ast.walk(tree):
        name = dotted(node.func) if isinstance(node, ast.Call) else None
        if name is None:
            continue
        head = name.split(".")[0]
        if name.startswith("self.engine."):
            name = "vllm.LLM." + name.removeprefix("self.engine.")
        elif name.startswith("self.model_runner."):
            name = name.removeprefix("self.model_runner.")
        elif head in local:
            name = f"{local[head]}.{name}"
        elif head != "vllm":
            continue
        calls[name] = (len(node.args), {k.arg for k in node.keywords})
    backend = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "VLLMBackend")
    convert = next(n for n in backend.body if getattr(n, "name", "") == "to_rollouts")
    reads = {n.attr for n in ast.walk(convert) if isinstance(n, ast.Attribute) and root(n) != "out"}
    keys = {
        k.value
        for n in ast.walk(backend)
        if isinstance(n, ast.Dict)
        for k in n.keys
        if isinstance(k, ast.Constant)
    }
    reasons = {
        c.value
        for n in ast.walk(convert)
        if isinstance(n, ast.Compare) and getattr(n.left, "attr", "") == "finish_reason"
        for c in n.comparators
        for c in (c.elts if isinstance(c, ast.Tuple | ast.Set | ast.List) else [c])
        if isinstance(c, ast.Constant)
    }
    return {"imports": imports, "calls": calls, "reads": reads, "keys": keys, "reasons": reasons}


def test_the_contract_lists_every_use_of_vllm_in_rollout():
    used = scan(ROLLOUT.read_text())
    assert used["imports"] == IMPORTS
    assert used["calls"] == CALLS, "a vLLM call in rollout.py differs from CALLS: update both"
    assert used["reads"] == set().union(*OUTPUTS.values())
    assert used["keys"] == PROMPT_KEYS and used["reasons"] == FINISH_REASONS


def test_the_scan_sees_a_new_call():
    source = ROLLOUT.read_text() + "\n\ndef f(self):\n    self.engine.sleep(level=1)\n"
    assert scan(source)["calls"]["vllm.LLM.sleep"] == (0, {"level"})


def test_only_rollout_imports_vllm():
    pattern = re.compile(r"^\s*(import|from)\s+vllm\b", re.MULTILINE)
    users = [p for p in (ROOT / "sdlib").rglob("*.py") if pattern.search(p.read_text())]
    assert users == [ROLLOUT]


@pytest.fixture(scope="module")
def vllm():
    return pytest.importorskip("vllm", reason=NO_VLLM)


def resolve(name: str):
    """The object at a dotted path: the longest importable module, then attributes."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for part in parts[i:]:
            obj = getattr(obj, part)
        return obj
    raise ImportError(name)


def test_the_imports_exist(vllm):
    for module, name in IMPORTS:
        imported = importlib.import_module(module)
        assert name is None or hasattr(imported, name), f"{module}.{name}"


@pytest.mark.parametrize("callee", [c for c in CALLS if c.startswith("vllm.")])
def test_each_call_fits_the_signature(vllm, callee):
    positional, keywords = CALLS[callee]
    target = resolve(callee)
    signature = inspect.signature(target)
    self = [None] if inspect.isfunction(target) else []  # a method looked up on its class
    try:
        signature.bind(*self, *[None] * positional, **dict.fromkeys(keywords))
    except TypeError as err:
        pytest.fail(f"{callee}{signature} does not take what sdlib passes: {err}")


def test_the_llm_keywords_it_does_not_name_are_engine_arguments(vllm):
    from vllm import LLM
    from vllm.engine.arg_utils import EngineArgs

    named = set(inspect.signature(LLM).parameters)
    fields = {f.name for f in dataclasses.fields(EngineArgs)}
    assert CALLS["vllm.LLM"][1] - named <= fields


def test_the_sampling_keywords_are_sampling_params_fields(vllm):
    from vllm import SamplingParams

    assert CALLS["vllm.SamplingParams"][1] <= set(SamplingParams.__struct_fields__)


def allowed(annotation) -> list | None:
    """The values a Literal or Enum annotation allows (Optional unwrapped), else None."""
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return [m.value for m in annotation]
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return allowed(args[0]) if len(args) == 1 else None


def test_the_engine_settings_sdlib_passes_are_valid_engine_arguments(vllm, monkeypatch):
    from vllm.engine.arg_utils import EngineArgs

    seen = {}
    monkeypatch.setattr(vllm, "LLM", lambda **kw: seen.update(kw))
    VLLMBackend.from_model("some/model", None)
    assert set(seen) == CALLS["vllm.LLM"][1]
    EngineArgs(**seen)  # a dataclass: takes every keyword, checks no value
    types = {f.name: f.type for f in dataclasses.fields(EngineArgs)}
    assert seen["logprobs_mode"] in (allowed(types["logprobs_mode"]) or [])
    ranks = allowed(types["max_lora_rank"])  # a Literal in newer vLLMs, checked later in older
    for rank in (seen["max_lora_rank"], TrainConfig().lora_r):
        assert ranks is None or rank in ranks, f"vLLM serves LoRA ranks {ranks}, not {rank}"
    worker = seen["worker_extension_cls"]
    assert resolve(worker) is VLLMWeightLoader


@pytest.mark.parametrize("n, sampling", [(4, Sampling(9, 0.7, 0.95, 20)), (1, Sampling(9, 0.0))])
def test_sdlib_builds_valid_sampling_params(vllm, n, sampling):
    from vllm import SamplingParams

    params = VLLMBackend(None, None).sampling_params(n, sampling, seed=11)  # vLLM validates
    assert isinstance(params, SamplingParams)
    assert (params.n, params.max_tokens, params.seed, params.logprobs) == (n, 9, 11, 0)
    assert params.temperature == sampling.temperature


def test_sdlib_builds_valid_sampling_params_for_greedy_samples(vllm):
    # vLLM refuses n > 1 greedy samples; the backend asks for one and repeats it
    # (test_rollout.py), and one greedy sample is a valid request
    params = VLLMBackend(None, None).sampling_params(1, Sampling(9, 0.0), seed=11)
    assert (params.n, params.temperature) == (1, 0.0)


def test_sdlib_builds_valid_lora_requests(vllm, tmp_path):
    from vllm.lora.request import LoRARequest

    backend = VLLMBackend(None, None)
    backend.set_adapter(tmp_path)
    request = backend.lora_request()
    assert isinstance(request, LoRARequest)
    assert (request.lora_name, request.lora_int_id) == ("sdlib-2", 2)
    assert request.lora_path == str(tmp_path)


def test_the_outputs_have_the_attributes_sdlib_reads(vllm):
    for name, attributes in OUTPUTS.items():
        fields = set(inspect.signature(resolve(name)).parameters)
        assert attributes <= fields, f"{name} lacks {attributes - fields}"


def test_prompts_and_finish_reasons(vllm):
    from vllm.inputs import TokensPrompt
    from vllm.v1.engine import FINISH_REASON_STRINGS

    assert PROMPT_KEYS.issubset(TokensPrompt.__annotations__)
    assert FINISH_REASONS | {"length"} <= set(FINISH_REASON_STRINGS)


def test_the_worker_extension_hooks(vllm):
    worker = pytest.importorskip("vllm.v1.worker.gpu_worker", reason="vLLM's GPU worker").Worker
    # vLLM mixes the extension into its worker and refuses a name the worker has already
    clashes = [a for a in dir(VLLMWeightLoader) if not a.startswith("__") and hasattr(worker, a)]
    assert clashes == []
    assert re.search(r"self\.model_runner\s*[:=]", inspect.getsource(worker))
    positional, keywords = CALLS["model.load_weights"]
    for module, name in MODELS:
        model = getattr(importlib.import_module(f"vllm.model_executor.models.{module}"), name)
        signature = inspect.signature(model.load_weights)
        signature.bind(None, *[None] * positional, **dict.fromkeys(keywords))
