"""Type stub of eigenlorax (the Python front of the Rust library)."""

import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

__version__: str

PathLike = Union[str, os.PathLike[str]]
Progress = Callable[[int, int, str], Any]

class ElxError(Exception): ...
class BadInputError(ElxError): ...
class ElxIOError(ElxError): ...
class SubspaceMismatchError(ElxError): ...
class UsageError(ElxError): ...
class NumericError(ElxError): ...
class EngineError(ElxError): ...
class UnsupportedError(ElxError): ...

class Adapter:
    state_dict: Mapping[str, Any]
    config: Any
    name: str
    metadata: Dict[str, str]
    def __init__(
        self,
        state_dict: Mapping[str, Any],
        config: Any,
        name: str = "state_dict",
        metadata: Optional[Mapping[str, str]] = None,
    ) -> None: ...
    @classmethod
    def from_peft_model(cls, model: Any, name: str = "state_dict", adapter_name: str = "default") -> Adapter: ...

AdapterLike = Union[PathLike, Adapter]

class Coefficients:
    @classmethod
    def load(cls, path: PathLike) -> Coefficients: ...
    def save(self, path: PathLike) -> None: ...
    @property
    def task(self) -> str: ...
    @property
    def subspace_id(self) -> str: ...
    @property
    def modules(self) -> List[str]: ...
    @property
    def errors(self) -> Dict[str, float]: ...
    @property
    def missing(self) -> List[str]: ...

class Bundle:
    @classmethod
    def load(cls, path: PathLike) -> Bundle: ...
    def save(self, path: PathLike) -> None: ...
    @property
    def id(self) -> str: ...
    @property
    def modules(self) -> List[str]: ...
    @property
    def ranks(self) -> Dict[str, Tuple[int, int]]: ...
    @property
    def manifest(self) -> Dict[str, Any]: ...
    def to_bytes(self) -> bytes: ...
    def project(self, adapter: AdapterLike, task: Optional[str] = None) -> Coefficients: ...
    def reconstruct(self, coeffs: Coefficients, out_dir: PathLike, force: bool = False) -> None: ...

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
) -> Bundle: ...

@dataclass(frozen=True)
class Diagnostics:
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
) -> Diagnostics: ...

@dataclass(frozen=True)
class Prediction:
    task: str
    label: str
    probs: Dict[str, float]

@dataclass(frozen=True)
class FinetuneResult:
    task: int
    steps: int
    forward_passes: int
    best_metric: float
    best_step: int
    train_loss: float
    train_accuracy: float
    val_loss: Optional[float] = ...
    val_accuracy: Optional[float] = ...
    warnings: List[str] = ...

class Runtime:
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
    ) -> None: ...
    @property
    def backend(self) -> str: ...
    @property
    def subspace_id(self) -> str: ...
    def load_task(self, path: PathLike) -> int: ...
    def unload_task(self, task: int) -> None: ...
    def run(
        self, inputs: Any, task: Union[None, int, Sequence[int]] = None, *, mask: Any = None
    ) -> npt.NDArray[np.float32]: ...
    def predict(self, inputs: Any, task: Union[int, Sequence[int]], *, mask: Any = None) -> List[Prediction]: ...
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
    ) -> FinetuneResult: ...

@dataclass
class Generation:
    text: str
    tokens: List[int]
    logprobs: List[float]
    finish: str

class Generator:
    def __init__(
        self,
        model: PathLike,
        bundle: Optional[PathLike] = None,
        backend: str = "tract",
        *,
        provider: str = "cpu",
        weights: str = "f32",
    ) -> None: ...
    @property
    def backend(self) -> str: ...
    @property
    def subspace_id(self) -> str: ...
    @property
    def base_task(self) -> int: ...
    def load_task(self, path: PathLike) -> int: ...
    def unload_task(self, task: int) -> None: ...
    def chat_prompt(self, user: str, system: Optional[str] = None) -> str: ...
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
    ) -> Generation: ...
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
    ) -> List[Generation]: ...
