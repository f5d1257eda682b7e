//! Stage 4: the device runtime, as one path for apps: graph surgery ([`crate::graph`]: bind,
//! patch, import) and serving ([`crate::serve`]: the task store and the engines), re-exported
//! here so that `runtime::tract::Runtime`, `runtime::Engine` and the rest keep their paths.

pub use crate::graph::{
    BertConfig, CoeffInput, ImportedModel, IndexLimit, ModelProto, PatchForm, PatchedModel, bind,
    bind_file, check, import_hf, import_hf_file, load_base, onnx, onnx_pb, patch, patch_file,
    patch_owned, patch_owned_with, patch_with, pb, read_model,
};
#[cfg(feature = "tract")]
pub use crate::serve::tract;
pub use crate::serve::{
    Backend, CoeffTensor, Engine, HiddenState, Task, TaskData, TaskId, TaskStore, engine, hidden,
    input, ort, store,
};
