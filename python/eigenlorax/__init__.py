"""EigenLoRAx at the edge, from Python.

Recycle LoRA adapters into one principal subspace per module, project a new adapter onto it
as a few coefficients, and serve or finetune tasks on a base ONNX model::

    import eigenlorax as elx
    bundle = elx.extract(["lora/task0", "lora/task1", "lora/task2"], k=8)
    bundle.save("domain.elxb")

Adapters are PEFT folders (or kohya/diffusers ``.safetensors`` files), or PEFT state dicts
held in memory (numpy arrays or torch tensors, read in place through the buffer protocol or
DLPack: see :class:`Adapter`). The heavy work runs in Rust with the GIL released; errors are
:class:`ElxError` subclasses carrying the library's message (the ``elx`` command line's).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union


from . import _native
from ._native import (
    BadInputError,
    ElxError,
    ElxIOError,
    EngineError,
    NumericError,
    SubspaceMismatchError,
    UnsupportedError,
    UsageError,
)

__version__ = _native.__version__

__all__ = [
    "Adapter",
    "BadInputError",
    "Bundle",
    "Coefficients",
    "ElxError",
    "ElxIOError",
    "EngineError",
    "FinetuneResult",
    "Generation",
    "Generator",
    "NumericError",
    "Prediction",
    "Runtime",
    "SubspaceMismatchError",
    "UnsupportedError",
    "UsageError",
    "Diagnostics",
    "diagnostics",
    "extract",
]

Progress = Callable[[int, int, str], Any]
PathLike = Union[str, "os.PathLike[str]"]


def _np() -> Any:
    """numpy, imported when first needed: extraction from folders never needs it, and the
    import is a twentieth of a 50-adapter extraction (issue 30's budget is 1.05x the CLI)."""
    import numpy

    return numpy


def _dtype_name(np: Any, dtype: Any) -> Optional[str]:
    """The safetensors dtype name of a little-endian numpy dtype (None if unsupported)."""
    return {
        np.dtype("<f8"): "F64",
        np.dtype("<f4"): "F32",
        np.dtype("<f2"): "F16",
        np.dtype("i1"): "I8",
        np.dtype("u1"): "U8",
        np.dtype("<i2"): "I16",
        np.dtype("<i4"): "I32",
        np.dtype("<i8"): "I64",
        np.dtype("bool"): "BOOL",
    }.get(dtype)


def _tensor_view(key: str, value: Any) -> Tuple[str, str, List[int], Any]:
    """(key, safetensors dtype, shape, C-contiguous array) of one tensor, without a copy where
    the layout allows: numpy arrays as they are, torch CPU tensors through DLPack (bfloat16
    as its int16 bits). A non-contiguous tensor is made contiguous (a copy of that tensor);
    a GPU tensor is brought to the CPU (a copy)."""
    np = _np()
    name = None
    if hasattr(value, "__dlpack__") and hasattr(value, "detach"):
        # A torch tensor, used through its own methods: torch is never imported here.
        t = value.detach()
        if str(getattr(t, "device", "cpu")) != "cpu":
            t = t.cpu()
        t = t.contiguous()
        if str(t.dtype) == "torch.bfloat16":
            torch = sys.modules["torch"]  # loaded: a tensor exists
            t = t.view(torch.int16)
            name = "BF16"
        try:
            arr = np.from_dlpack(t)
        except (TypeError, RuntimeError, AttributeError, BufferError):
            arr = np.asarray(t)
    else:
        arr = np.asarray(value)
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    if name is None:
        if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and sys.byteorder != "little"):
            raise UsageError(f"tensor {key}: expected little-endian values, found {arr.dtype}")
        name = _dtype_name(np, arr.dtype.newbyteorder("<") if arr.dtype.byteorder == "=" else arr.dtype)
        if name is None:
            raise UsageError(
                f"tensor {key}: expected float64, float32, float16, bfloat16 or int8 values, found {arr.dtype}"
            )
    return key, name, [int(d) for d in arr.shape], arr


def _config_json(config: Any) -> str:
    """The adapter_config.json text of a PEFT config: a dict, a LoraConfig (its ``to_dict``)
    or JSON text. Sets (PEFT's target_modules) become sorted lists, as PEFT saves them."""
    if isinstance(config, str):
        return config
    if hasattr(config, "to_dict"):
        config = config.to_dict()

    def plain(v: Any) -> Any:
        if isinstance(v, (set, frozenset)):
            return sorted(v)
        if hasattr(v, "value") and type(v).__module__.startswith("peft"):
            return v.value  # PEFT enums (task_type, peft_type)
        raise TypeError(f"cannot write {type(v).__name__} into adapter_config.json")

    return json.dumps(dict(config), default=plain)


class Adapter:
    """A PEFT LoRA adapter held in memory: its ``state_dict`` and its config.

    ``state_dict`` maps the keys PEFT saves (``...lora_A.weight``, ``...lora_B.weight``, as
    ``get_peft_model_state_dict(model)`` returns them) to numpy arrays or torch tensors;
    they are read in place, never copied, while a call runs. ``config`` is the adapter's
    ``LoraConfig`` (or its ``to_dict()``, or the adapter_config.json text). ``name`` stands
    for the adapter's folder in errors and in the bundle's list of sources; ``metadata`` is
    the safetensors metadata PEFT writes (``{"format": "pt"}``). The adapter's SHA-256 is
    that of the ``adapter_model.safetensors`` ``save_pretrained`` would write, so extracting
    from memory gives the bundle that extracting from the saved folder, named alike, gives.
    """

    def __init__(
        self,
        state_dict: Mapping[str, Any],
        config: Any,
        name: str = "state_dict",
        metadata: Optional[Mapping[str, str]] = None,
    ) -> None:
        self.state_dict = state_dict
        self.config = config
        self.name = os.fspath(name)
        self.metadata = {"format": "pt"} if metadata is None else dict(metadata)

    @classmethod
    def from_peft_model(cls, model: Any, name: str = "state_dict", adapter_name: str = "default") -> "Adapter":
        """The adapter of a ``peft`` ``PeftModel`` (needs ``peft`` installed)."""
        from peft import get_peft_model_state_dict  # type: ignore[import-not-found]

        sd = get_peft_model_state_dict(model, adapter_name=adapter_name)
        return cls(sd, model.peft_config[adapter_name], name=name)

    def _native(self) -> tuple:
        tensors = [_tensor_view(str(k), v) for k, v in self.state_dict.items()]
        return (self.name, _config_json(self.config), tensors, self.metadata or None)

    def __repr__(self) -> str:
        return f"Adapter(name={self.name!r}, {len(self.state_dict)} tensors)"


AdapterLike = Union[PathLike, Adapter]


def _source(a: AdapterLike) -> Any:
    if isinstance(a, Adapter):
        return a._native()
    if isinstance(a, (str, os.PathLike)):
        return os.fspath(a)
    raise TypeError(f"expected an adapter path or an eigenlorax.Adapter, found {type(a).__name__}")


class Coefficients:
    """One task's coefficients in a bundle's subspace (what ``Bundle.project`` returns, or a
    task file read with :meth:`load`)."""

    def __init__(self, native: Any) -> None:
        self._c = native

    @classmethod
    def load(cls, path: PathLike) -> "Coefficients":
        """Reads a task file (.elxc)."""
        return cls(_native.Coefficients.load(os.fspath(path)))

    def save(self, path: PathLike) -> None:
        """Writes the task file (.elxc) atomically; ``elx run`` and :class:`Runtime` serve it."""
        self._c.save(os.fspath(path))

    @property
    def task(self) -> str:
        """The task's name."""
        return self._c.task

    @property
    def subspace_id(self) -> str:
        """The id of the bundle the coefficients belong to."""
        return self._c.subspace_id

    @property
    def modules(self) -> List[str]:
        """Module names."""
        return self._c.modules

    @property
    def errors(self) -> Dict[str, float]:
        """Relative error of ΔW after projection, per module (projected coefficients only)."""
        return self._c.errors

    @property
    def missing(self) -> List[str]:
        """The adapter's modules that the bundle lacks (skipped)."""
        return self._c.missing

    def __repr__(self) -> str:
        return f"Coefficients(task={self.task!r}, {len(self.modules)} modules, subspace {self.subspace_id})"


class Bundle:
    """One principal subspace per module (a ``.elxb`` bundle), in memory."""

    def __init__(self, native: Any) -> None:
        self._b = native

    @classmethod
    def load(cls, path: PathLike) -> "Bundle":
        """Reads a bundle file, checking every tensor against the bundle's id."""
        return cls(_native.Bundle.load(os.fspath(path)))

    def save(self, path: PathLike) -> None:
        """Writes the bundle atomically: the bytes ``elx extract`` writes for the same inputs."""
        self._b.save(os.fspath(path))

    @property
    def id(self) -> str:
        """The subspace id (a hash of the bases and the manifest)."""
        return self._b.id

    @property
    def modules(self) -> List[str]:
        """Module names, sorted."""
        return self._b.modules

    @property
    def ranks(self) -> Dict[str, Tuple[int, int]]:
        """(K_A, K_B) per module."""
        return self._b.ranks

    @property
    def manifest(self) -> Dict[str, Any]:
        """The manifest: options, sources, per-module shapes, ranks and energies."""
        return json.loads(self._b.manifest_json)

    def to_bytes(self) -> bytes:
        """The bundle file's bytes."""
        return bytes(self._b.to_bytes())

    def project(self, adapter: AdapterLike, task: Optional[str] = None) -> Coefficients:
        """Projects an adapter (folder or :class:`Adapter`) onto the subspace: the task's
        coefficients, as ``elx project``. An adapter of another base model is refused."""
        return Coefficients(self._b.project(_source(adapter), task))

    def reconstruct(self, coeffs: Coefficients, out_dir: PathLike, force: bool = False) -> None:
        """Writes the PEFT adapter folder the coefficients stand for (``elx reconstruct``);
        PEFT's ``PeftModel.from_pretrained`` loads it. A folder that is not empty is refused
        unless ``force``."""
        self._b.reconstruct(coeffs._c, os.fspath(out_dir), force)

    def __repr__(self) -> str:
        return repr(self._b)


def extract(
    adapters: Sequence[AdapterLike],
    k: Optional[int] = None,
    energy: Optional[float] = None,
    *,
    center: bool = False,
    canonicalize: bool = True,
    pseudo: int = 0,
    seed: int = 0,
    full_spectrum: bool = False,
    dtype: str = "f32",
    modules: Optional[str] = None,
    allow_mixed_bases: bool = False,
    progress: Optional[Progress] = None,
) -> Bundle:
    """Extracts one principal subspace per module from LoRA adapters (``elx extract``).

    ``adapters``: PEFT folders, kohya/diffusers ``.safetensors`` files, or :class:`Adapter`
    state dicts, all of one base model (``allow_mixed_bases`` accepts several). Keep ``k``
    directions per side, or the fewest reaching ``energy`` (default 0.9 of the energy).
    ``dtype``: storage of the bases (f32, f16, bf16, int8). ``modules``: a regular
    expression selecting modules. ``progress(done, total, module)`` is called after each
    module, from a worker thread (``tqdm``: ``lambda d, t, _: bar.update(1)``).

    The bundle equals, byte for byte, what ``elx extract`` writes for the same adapters and
    options.
    """
    sources = [_source(a) for a in adapters]
    return Bundle(
        _native.extract(
            sources,
            k=k,
            energy=energy,
            center=center,
            canonicalize=canonicalize,
            pseudo=pseudo,
            seed=seed,
            full_spectrum=full_spectrum,
            dtype=dtype,
            modules=modules,
            allow_mixed_bases=allow_mixed_bases,
            progress=progress,
        )
    )


@dataclass(frozen=True)
class Diagnostics:
    """Will recycling pay for new tasks like these? (``elx inspect --held-out``)

    ``verdict``: "expected", "partial" or "none" (for the adapters outside any cluster, or
    all of them); ``line``: the sentence ``elx`` prints, per cluster and for the rest.
    ``median``, ``q1``, ``q3``: the distribution of the held-out capture; ``clusters``: the
    groups of adapters that capture each other. ``captured``: mean share of a held-out adapter's ΔW (energy-weighted) inside the
    subspace of the others, against ``random`` for a random subspace of the same size and
    ``chance``, its expectation; ``min`` / ``max`` over the adapters; ``mean_only``,
    ``basis_only``, ``mean_plus_basis``: the same in the others' mean direction, centered
    basis, and both; ``k_total``: mean Σ (K_A + K_B). ``adapters``: every adapter's figures.
    """

    verdict: str
    line: str
    median: float
    q1: float
    q3: float
    clusters: List[List[str]]
    captured: float
    random: float
    chance: float
    min: float
    max: float
    mean_only: float
    basis_only: float
    mean_plus_basis: float
    k_total: float
    adapters: List[Dict[str, Any]]


def diagnostics(
    bundle: Bundle, held_out: Sequence[PathLike], *, seed: int = 0, allow_mixed_bases: bool = False
) -> Diagnostics:
    """Each adapter of ``held_out`` (at least two folders) against the subspace of the
    others, extracted with ``bundle``'s options: the verdict ``elx inspect BUNDLE --adapters
    ... --held-out`` prints, and its figures."""
    d = json.loads(_native.diagnostics(bundle._b, [os.fspath(p) for p in held_out], seed, allow_mixed_bases))
    m, r, dist = d["mean"], d["mean"]["recycled"], d["distribution"]
    return Diagnostics(
        verdict=d["verdict"]["gain"],
        line=d["verdict"]["line"],
        median=dist["median"],
        q1=dist["q1"],
        q3=dist["q3"],
        clusters=d["clusters"],
        captured=r["captured"],
        random=r["random"],
        chance=r["chance"],
        min=m["min"],
        max=m["max"],
        mean_only=m["mean_only"],
        basis_only=m["basis_only"],
        mean_plus_basis=m["mean_plus_basis"],
        k_total=m["k_total"],
        adapters=d["adapters"],
    )


@dataclass(frozen=True)
class Prediction:
    """A row's prediction by its task's head."""

    task: str
    label: str
    probs: Dict[str, float]


@dataclass(frozen=True)
class FinetuneResult:
    """A finetuned task (added to the runtime as ``task``) and the run's figures."""

    task: int
    steps: int
    forward_passes: int
    best_metric: float
    best_step: int
    train_loss: float
    train_accuracy: float
    val_loss: Optional[float] = None
    val_accuracy: Optional[float] = None
    warnings: List[str] = field(default_factory=list)


class Runtime:
    """A base ONNX model patched for one bound bundle on one engine (``elx run``).

    ``model``: the base model; ``bundle``: the bundle file, bound to the model with
    ``elx bind``. ``backend``: ``"tract"`` (pure Rust, CPU) or ``"ort"`` (ONNX Runtime, in a
    wheel built with the ``ort`` feature; ``provider`` cpu, cuda or tensorrt). Texts go
    through ``tokenizer`` (default: tokenizer.json beside the model). Thread-safe: tasks load
    while other threads run.
    """

    def __init__(
        self,
        model: PathLike,
        bundle: PathLike,
        backend: str = "tract",
        *,
        provider: str = "cpu",
        tokenizer: Optional[PathLike] = None,
        max_length: Optional[int] = None,
        pooling: str = "mean",
        output: Optional[str] = None,
    ) -> None:
        self._rt = _native.Runtime(
            os.fspath(model),
            os.fspath(bundle),
            backend,
            provider,
            None if tokenizer is None else os.fspath(tokenizer),
            max_length,
            pooling,
            output,
        )
        self._base: Optional[int] = None

    @property
    def backend(self) -> str:
        """The engine running ("tract", "ort:cpu", ...), after any fallback to the CPU."""
        return self._rt.backend

    @property
    def subspace_id(self) -> str:
        """The bundle's id: task files must carry it."""
        return self._rt.subspace_id

    def load_task(self, path: PathLike) -> int:
        """Loads a task file (.elxc) of this bundle; returns its id."""
        return self._rt.load_task(os.fspath(path))

    def unload_task(self, task: int) -> None:
        """Removes a task."""
        self._rt.unload_task(task)

    def _tasks(self, task: Union[None, int, Sequence[int]]) -> List[int]:
        if task is None:
            if self._base is None:
                self._base = self._rt.base_task()
            return [self._base]
        if isinstance(task, int):
            return [task]
        return [int(t) for t in task]

    def _run(self, inputs: Any, task: Any, mask: Any) -> tuple:
        tasks = self._tasks(task)
        if isinstance(inputs, str):
            raise UsageError("expected a list of texts, found one string")
        if isinstance(inputs, (list, tuple)) and all(isinstance(t, str) for t in inputs):
            return self._rt.run(tasks, texts=list(inputs))
        np = _np()
        ids = np.asarray(inputs)
        if ids.ndim != 2 or ids.dtype.kind not in "iu":
            raise UsageError(f"expected texts or token ids [rows, seq] of integers, found {ids.dtype} {ids.shape}")
        m = None if mask is None else np.asarray(mask, dtype=np.int64).reshape(-1).tolist()
        return self._rt.run(
            tasks, ids=ids.astype(np.int64).reshape(-1).tolist(), mask=m, shape=(ids.shape[0], ids.shape[1])
        )

    def run(self, inputs: Any, task: Union[None, int, Sequence[int]] = None, *, mask: Any = None) -> Any:
        """Pooled features [rows, dim] (float32) of texts (a list of str) or token ids (an
        integer array [rows, seq], ``mask`` of the same shape). ``task``: a task id, a list
        (a mixed batch: row i with the i-th task), or None for the base model."""
        pooled, rows, dim, _ = self._run(inputs, task, mask)
        np = _np()
        return np.frombuffer(pooled, dtype=np.float32).reshape(rows, dim)

    def predict(self, inputs: Any, task: Union[int, Sequence[int]], *, mask: Any = None) -> List[Prediction]:
        """Each row's prediction by its task's head; a task without a head is refused."""
        _, _, _, rows = self._run(inputs, task, mask)
        out = []
        for name, pred in rows:
            if pred is None:
                raise UsageError(f"task {name!r} has no head: use run() for its features")
            label, probs, labels = pred
            out.append(Prediction(task=name, label=label, probs=dict(zip(labels, probs))))
        return out

    def finetune(
        self,
        examples: Iterable[Tuple[str, str]],
        val: Optional[Iterable[Tuple[str, str]]] = None,
        *,
        task: str = "task",
        output: Optional[PathLike] = None,
        rank: Optional[int] = None,
        steps: Optional[int] = None,
        grad: str = "exact",
        lr: Optional[float] = None,
        head_lr: Optional[float] = None,
        batch_size: int = 16,
        seed: int = 0,
        eval_every: Optional[int] = None,
        head_warmup: int = 0,
        truncate: bool = False,
        threads: int = 1,
        progress: Optional[Progress] = None,
    ) -> FinetuneResult:
        """Trains a new task's coefficients and head on (text, label) pairs, as
        ``elx finetune`` (exact gradients through a training graph; ``grad="spsa"``: forward
        passes only), adds it to the runtime and, with ``output``, writes its .elxc.
        ``progress(step, total_steps, "step")`` is called after each step."""
        import warnings as _warnings

        with _warnings.catch_warnings(record=True) as caught:
            _warnings.simplefilter("always")
            tid, fig = self._rt.finetune(
                [(str(t), str(l)) for t, l in examples],
                None if val is None else [(str(t), str(l)) for t, l in val],
                task,
                None if output is None else os.fspath(output),
                rank,
                steps,
                grad,
                lr,
                head_lr,
                batch_size,
                seed,
                eval_every,
                head_warmup,
                truncate,
                threads,
                progress,
            )
        notes = [str(w.message) for w in caught]
        for n in notes:
            _warnings.warn(n, stacklevel=2)
        return FinetuneResult(
            task=tid,
            steps=int(fig["steps"]),
            forward_passes=int(fig["forward_passes"]),
            best_metric=fig["best_metric"],
            best_step=int(fig["best_step"]),
            train_loss=fig["train_loss"],
            train_accuracy=fig["train_accuracy"],
            val_loss=fig.get("val_loss"),
            val_accuracy=fig.get("val_accuracy"),
            warnings=notes,
        )


@dataclass
class Generation:
    """One generation: its text, each token's id and log-probability, and why it stopped
    (``"stop"``: a stop token or string, ``"length"``: ``max_tokens``, ``"context"``: the
    model's context, ``"caller"``: a callback's exception)."""

    text: str
    tokens: List[int]
    logprobs: List[float]
    finish: str


def _generation(native: Tuple[str, List[Tuple[int, float]], str]) -> Generation:
    text, tokens, finish = native
    return Generation(text=text, tokens=[t for t, _ in tokens], logprobs=[p for _, p in tokens], finish=finish)


class Generator:
    """A decoder LLM on one engine (``elx generate``): the base model alone, or patched for
    one bound bundle, whose tasks load, swap and mix in a batch with no rebuild.

    ``model``: the folder ``elx import-gguf`` (or ``elx import-hf``) wrote: model.onnx with its
    tokenizer and chat template. ``bundle``: a bundle bound to that model (``elx bind``), or
    None for the base model alone. ``backend``/``provider`` as for :class:`Runtime`.
    ``weights``: how the engine stores the base weights, as ``elx generate --weights``:
    "f32" (exact), "q4_0" (4-bit blocks) or "q4_1" (4-bit blocks with an offset, ONNX Runtime
    only: a model imported from a Q4_1 GGUF file then multiplies the file's own blocks). This
    is the decoder's counterpart of :class:`Runtime`: a request keeps its own KV cache, so the
    model is served token by token rather than as pooled features. Thread-safe.
    """

    def __init__(
        self,
        model: PathLike,
        bundle: Optional[PathLike] = None,
        backend: str = "tract",
        *,
        provider: str = "cpu",
        weights: str = "f32",
    ) -> None:
        self._g = _native.Generator(
            os.fspath(model), None if bundle is None else os.fspath(bundle), backend, provider, weights
        )

    @property
    def backend(self) -> str:
        """The engine running ("tract", "ort:cpu", ...), after any fallback to the CPU."""
        return self._g.backend

    @property
    def subspace_id(self) -> str:
        """The bundle's id: task files must carry it."""
        return self._g.subspace_id

    @property
    def base_task(self) -> int:
        """The task of the base model (zero coefficients)."""
        return self._g.base_task

    def load_task(self, path: PathLike) -> int:
        """Loads a task file (.elxc) of this bundle; returns its id."""
        return self._g.load_task(os.fspath(path))

    def unload_task(self, task: int) -> None:
        """Removes a task; requests that hold it finish with it."""
        self._g.unload_task(task)

    def chat_prompt(self, user: str, system: Optional[str] = None) -> str:
        """``user`` (after ``system``, if given) as a conversation rendered by the model's chat
        template, the assistant's turn opened: what ``elx generate --chat`` feeds."""
        messages = [] if system is None else [("system", system)]
        return self._g.chat_prompt(messages + [("user", user)])

    def generate(
        self,
        prompt: str,
        task: Optional[int] = None,
        *,
        chat: bool = False,
        system: Optional[str] = None,
        max_tokens: int = 128,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
        stop: Optional[Sequence[str]] = None,
        on_text: Optional[Callable[[str], Any]] = None,
    ) -> Generation:
        """Generates after ``prompt`` on ``task`` (None: the base model), as
        ``elx generate``: greedy unless ``temperature`` > 0 (then ``top_k``/``top_p``
        sampling, seeded by ``seed``); ``chat`` wraps the prompt in the model's template.
        Stops at the model's stop tokens, ``max_tokens`` or the first of ``stop``.
        ``on_text(piece)`` streams the text as it becomes final; an exception it raises
        stops generation and propagates."""
        text = self.chat_prompt(prompt, system) if chat else prompt
        return _generation(
            self._g.generate(
                self.base_task if task is None else int(task),
                text,
                max_tokens,
                temperature,
                top_k,
                top_p,
                seed,
                [str(s) for s in (stop or [])],
                on_text,
            )
        )

    def generate_batch(
        self,
        prompts: Sequence[str],
        tasks: Union[None, int, Sequence[Optional[int]]] = None,
        *,
        chat: bool = False,
        system: Optional[str] = None,
        max_tokens: int = 128,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> List[Generation]:
        """Generates after every prompt, row i on ``tasks[i]`` (one id for all rows, or None
        for the base model), all rows decoded together as one batch whatever their tasks:
        each row gets the tokens it gets alone."""
        if isinstance(prompts, str):
            raise UsageError("expected a list of prompts, found one string")
        if tasks is None or isinstance(tasks, int):
            tasks = [tasks] * len(prompts)
        ids = [self.base_task if t is None else int(t) for t in tasks]
        texts = [self.chat_prompt(p, system) if chat else p for p in prompts]
        return [
            _generation(g)
            for g in self._g.generate_batch(ids, texts, max_tokens, temperature, top_k, top_p, seed)
        ]
