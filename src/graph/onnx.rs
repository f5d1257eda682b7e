//! Small helpers over the ONNX protobuf types: reading a model file with its hash, building
//! tensors, value infos and nodes, and reading f32 initializers.

use super::pb::{
    AttributeProto, ModelProto, NodeProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto, attribute_proto::AttributeType, tensor_shape_proto, type_proto,
};
use crate::error::{Error, Result};
use prost::Message;
use prost::bytes::{Buf, Bytes};
use std::path::Path;

/// ONNX element type code of f32 (`TensorProto.DataType.FLOAT`).
pub const FLOAT: i32 = 1;
/// ONNX element type code of i64 (`TensorProto.DataType.INT64`).
pub const INT64: i32 = 7;
/// ONNX element type code of u8 (`TensorProto.DataType.UINT8`).
pub const UINT8: i32 = 2;
/// ONNX element type code of i8 (`TensorProto.DataType.INT8`).
pub const INT8: i32 = 3;

/// Reads an ONNX model file; returns the decoded model and the SHA-256 of the file's bytes.
///
/// The file is read whole (its size bounds the allocation); a file that is not a protobuf
/// `ModelProto` with a graph is an error naming the file. The initializers' `raw_data` are
/// slices of that one buffer, not copies, so the weights are held once.
pub fn read_model(path: &Path) -> Result<(ModelProto, String)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let sha = crate::util::sha256_hex(&bytes);
    let model = decode_model(Bytes::from(bytes), path)?;
    Ok((model, sha))
}

/// Maps an ONNX model file; returns the decoded model, the SHA-256 of the file's bytes and
/// a handle on the map's pages.
///
/// The initializers' `raw_data` are slices of the map, so a weight occupies memory only
/// while it is being read: the hash is taken chunk by chunk, each chunk's pages let go
/// after it, and a caller that has converted a weight (quantized it, handed it to an engine)
/// lets go of its pages with [`MappedPages::release`]. Reading the file whole
/// ([`read_model`]) keeps every byte resident as long as the model lives: 540 MB for
/// SmolLM2-135M in f32, whatever the engine stores.
pub fn map_model(path: &Path) -> Result<(ModelProto, String, MappedPages)> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the map is read-only and lives as long as the last slice of it. As with every
    // mmap, a concurrent truncation by another process is outside what we can defend
    // against; the decoder checks every length against the mapped length.
    let map =
        std::sync::Arc::new(unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?);
    let pages = MappedPages(std::sync::Arc::clone(&map));
    let sha = crate::util::sha256_hex_chunks(&map, 8 << 20, |c| pages.release(c));
    // Decoding reads only each tensor's header, but a fault maps the whole page-cache folio
    // around it: SmolLM2's 273 headers left 228 of its 517 MiB resident when decoded at
    // once. Pages behind the decoder's cursor are let go as it moves.
    let bytes = Bytes::from_owner(SharedMap(map));
    let model = decode_model(
        ReleasingBuf {
            bytes,
            at: 0,
            released: 0,
            pages: pages.clone(),
        },
        path,
    )?;
    pages.release_all();
    Ok((model, sha, pages))
}

/// A mapped model as the decoder's input: byte fields come out as slices of the map (as
/// from [`Bytes`]), and the pages behind the cursor are let go every
/// [`RELEASE_BEHIND`] bytes.
struct ReleasingBuf {
    bytes: Bytes,
    at: usize,
    released: usize,
    pages: MappedPages,
}

/// How far the decoder moves between two releases of the pages behind it.
const RELEASE_BEHIND: usize = 4 << 20;

impl Buf for ReleasingBuf {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn chunk(&self) -> &[u8] {
        &self.bytes[self.at..]
    }

    fn advance(&mut self, n: usize) {
        // The decoder checks every length against `remaining` first.
        self.at += n.min(self.remaining());
        if self.at - self.released >= RELEASE_BEHIND {
            // Up to a folio boundary behind the cursor: the folio under it is still read.
            let upto = self.at / FOLIO_SPAN * FOLIO_SPAN;
            if upto > self.released {
                self.pages
                    .release_range(self.released, upto - self.released);
                self.released = upto;
            }
        }
    }

    fn copy_to_bytes(&mut self, len: usize) -> Bytes {
        let out = self
            .bytes
            .slice(self.at..(self.at + len).min(self.bytes.len()));
        self.advance(len);
        out
    }
}

/// The span a release widens to: the page cache keeps a file in folios of up to 2 MiB, and a
/// fault maps the whole folio around the byte read.
const FOLIO_SPAN: usize = 2 << 20;

/// The owner of the bytes [`map_model`] decodes from.
struct SharedMap(std::sync::Arc<memmap2::Mmap>);

impl AsRef<[u8]> for SharedMap {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The pages of a model file mapped by [`map_model`]: lets go of them once read.
#[derive(Clone)]
pub struct MappedPages(std::sync::Arc<memmap2::Mmap>);

impl std::fmt::Debug for MappedPages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedPages")
            .field("len", &self.0.len())
            .finish()
    }
}

impl MappedPages {
    /// Lets go of this process's pages of `data`, if `data` lies in the map: the page cache
    /// keeps the file's bytes, and a later read of them faults them back in. The range is
    /// widened to whole folios ([`FOLIO_SPAN`]): reading a 2 KB norm weight maps the 2 MiB
    /// around it. A neighbour's pages let go this way are faulted back in when read (the
    /// map is read-only, so nothing is lost). Best effort: nothing happens for bytes
    /// outside the map or if the kernel refuses.
    pub fn release(&self, data: &[u8]) {
        let base = self.0.as_ptr() as usize;
        let (start, end) = (data.as_ptr() as usize, data.as_ptr() as usize + data.len());
        if data.is_empty() || start < base || end > base + self.0.len() {
            return;
        }
        let first = (start - base) / FOLIO_SPAN * FOLIO_SPAN;
        let last = (end - base).next_multiple_of(FOLIO_SPAN).min(self.0.len());
        self.release_range(first, last - first);
    }

    /// Lets go of every page of the map (see [`MappedPages::release`]).
    pub fn release_all(&self) {
        self.release_range(0, self.0.len());
    }

    fn release_range(&self, offset: usize, len: usize) {
        #[cfg(unix)]
        if len > 0 {
            // SAFETY: a read-only *shared* mapping of a file (`Mmap::map`), for which
            // MADV_DONTNEED only drops page-table entries: any later access, through a slice
            // still borrowed from the map or a new one, sees the same file bytes again.
            let _ = unsafe {
                self.0
                    .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len)
            };
        }
        #[cfg(not(unix))]
        let _ = (offset, len);
    }
}

/// Decodes a `ModelProto` from bytes (tensor data slices `bytes`); `path` only names the
/// source in errors.
pub fn decode_model(bytes: impl Buf, path: &Path) -> Result<ModelProto> {
    let model = ModelProto::decode(bytes).map_err(|e| {
        Error::bad_file(
            path,
            format!("expected an ONNX model (protobuf ModelProto): {e}"),
        )
    })?;
    if model.graph.is_none() {
        return Err(Error::bad_file(
            path,
            "expected an ONNX model with a graph, found none",
        ));
    }
    Ok(model)
}

/// Encodes a model to the ONNX wire format.
pub fn encode_model(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// An f32 tensor (initializer) stored as little-endian `raw_data`.
pub fn tensor_f32(name: &str, dims: &[usize], data: &[f32]) -> TensorProto {
    let mut raw = Vec::with_capacity(data.len() * 4);
    for v in data {
        raw.extend_from_slice(&v.to_le_bytes());
    }
    tensor_raw(name, dims, FLOAT, raw)
}

/// The transpose of a row-major `rows × cols` matrix (HF linear weights are [out, in]; the
/// graphs' products read [in, out]).
pub fn transpose(rows: usize, cols: usize, w: &[f32]) -> Vec<f32> {
    let mut t = vec![0f32; w.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = w[r * cols + c];
        }
    }
    t
}

/// A u8 tensor (initializer), its bytes as `raw_data`.
pub fn tensor_u8(name: &str, dims: &[usize], data: Vec<u8>) -> TensorProto {
    tensor_raw(name, dims, UINT8, data)
}

/// An i8 tensor from its values.
pub fn tensor_i8(name: &str, dims: &[usize], data: &[i8]) -> TensorProto {
    tensor_raw(name, dims, INT8, data.iter().map(|&v| v as u8).collect())
}

/// A tensor of ONNX element type `data_type` whose little-endian bytes are `raw`.
fn tensor_raw(name: &str, dims: &[usize], data_type: i32, raw: Vec<u8>) -> TensorProto {
    TensorProto {
        name: name.to_string(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type,
        raw_data: raw.into(),
        ..Default::default()
    }
}

/// An i64 tensor (initializer) stored as little-endian `raw_data`.
pub fn tensor_i64(name: &str, dims: &[usize], data: &[i64]) -> TensorProto {
    let mut raw = Vec::with_capacity(data.len() * 8);
    for v in data {
        raw.extend_from_slice(&v.to_le_bytes());
    }
    tensor_raw(name, dims, INT64, raw)
}

/// One axis of a declared tensor shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size.
    Fixed(usize),
    /// A named symbolic size (e.g. `batch`).
    Param(String),
}

/// A graph input/output/value-info declaration of a tensor.
pub fn value_info(name: &str, elem_type: i32, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Dim::Fixed(n) => tensor_shape_proto::dimension::Value::DimValue(*n as i64),
                Dim::Param(p) => tensor_shape_proto::dimension::Value::DimParam(p.clone()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The declared dims of a value info, when it declares a tensor shape.
pub fn value_info_dims(v: &ValueInfoProto) -> Option<Vec<Dim>> {
    let type_proto::Value::TensorType(t) = v.r#type.as_ref()?.value.as_ref()? else {
        return None;
    };
    let shape = t.shape.as_ref()?;
    Some(
        shape
            .dim
            .iter()
            .map(|d| match &d.value {
                Some(tensor_shape_proto::dimension::Value::DimValue(n)) if *n >= 0 => {
                    Dim::Fixed(*n as usize)
                }
                Some(tensor_shape_proto::dimension::Value::DimParam(p)) => Dim::Param(p.clone()),
                _ => Dim::Param(String::new()),
            })
            .collect(),
    )
}

/// Accumulates the nodes and initializers of a graph being built (the importers' common
/// tool); names every single-output node's output after the node.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    /// The nodes, in topological order (each added after its inputs).
    pub nodes: Vec<NodeProto>,
    /// The initializers.
    pub inits: Vec<TensorProto>,
}

impl GraphBuilder {
    /// Adds node `name` (its single output is also called `name`) and returns the output.
    pub fn op(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
    ) -> String {
        self.nodes.push(node(op, name, inputs, &[name], attrs));
        name.to_string()
    }

    /// Adds an f32 initializer and returns its name.
    pub fn init_f32(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        self.inits.push(tensor_f32(name, dims, data));
        name.to_string()
    }

    /// Adds an i64 initializer and returns its name.
    pub fn init_i64(&mut self, name: &str, dims: &[usize], data: &[i64]) -> String {
        self.inits.push(tensor_i64(name, dims, data));
        name.to_string()
    }
}

/// A node of the default ONNX domain.
pub fn node(
    op_type: &str,
    name: &str,
    inputs: &[&str],
    outputs: &[&str],
    attribute: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        op_type: op_type.to_string(),
        name: name.to_string(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute,
        ..Default::default()
    }
}

/// An integer attribute.
pub fn attr_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        r#type: AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

/// A float attribute.
pub fn attr_float(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        r#type: AttributeType::Float as i32,
        f,
        ..Default::default()
    }
}

/// A list-of-integers attribute.
pub fn attr_ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        r#type: AttributeType::Ints as i32,
        ints: ints.to_vec(),
        ..Default::default()
    }
}

/// The attribute `name` of a node, if present.
pub fn get_attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

/// The integer attribute `name` of a node, or `default`.
pub fn get_attr_int(node: &NodeProto, name: &str, default: i64) -> i64 {
    get_attr(node, name).map(|a| a.i).unwrap_or(default)
}

/// The float attribute `name` of a node, or `default`.
pub fn get_attr_float(node: &NodeProto, name: &str, default: f32) -> f32 {
    get_attr(node, name).map(|a| a.f).unwrap_or(default)
}

/// Whether a tensor's data lives in an external file.
pub fn is_external(t: &TensorProto) -> bool {
    t.data_location == super::pb::tensor_proto::DataLocation::External as i32
        || !t.external_data.is_empty()
}

/// The values of an f32 initializer (from `raw_data` or `float_data`), checked against its dims.
///
/// `path` names the model in errors.
pub fn f32_data(t: &TensorProto, path: &Path) -> Result<Vec<f32>> {
    if t.data_type != FLOAT {
        return Err(Error::bad_tensor(
            path,
            &t.name,
            format!("expected f32 data, found ONNX type code {}", t.data_type),
        ));
    }
    if is_external(t) {
        return Err(Error::bad_tensor(
            path,
            &t.name,
            "expected data inside the model, found external data",
        ));
    }
    let mut n: usize = 1;
    for &d in &t.dims {
        let d = usize::try_from(d).map_err(|_| {
            Error::bad_tensor(
                path,
                &t.name,
                format!("expected non-negative dims, found {:?}", t.dims),
            )
        })?;
        n = n.checked_mul(d).ok_or_else(|| {
            Error::bad_tensor(path, &t.name, format!("dims {:?} overflow", t.dims))
        })?;
    }
    let data: Vec<f32> = if !t.raw_data.is_empty() {
        if t.raw_data.len() != n.saturating_mul(4) {
            return Err(Error::bad_tensor(
                path,
                &t.name,
                format!(
                    "expected {} bytes of raw data for dims {:?}, found {}",
                    n.saturating_mul(4),
                    t.dims,
                    t.raw_data.len()
                ),
            ));
        }
        t.raw_data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else {
        if t.float_data.len() != n {
            return Err(Error::bad_tensor(
                path,
                &t.name,
                format!(
                    "expected {n} values for dims {:?}, found {}",
                    t.dims,
                    t.float_data.len()
                ),
            ));
        }
        t.float_data.clone()
    };
    Ok(data)
}

#[cfg(test)]
mod tests {
    #[test]
    fn transpose_is_exact() {
        let w = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // 2 x 3
        assert_eq!(super::transpose(2, 3, &w), [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    }

    use super::*;
    use crate::graph::pb::GraphProto;

    /// The load peak depends on this: a decoded initializer's data is a view of the file
    /// buffer, not a second copy of the weights.
    #[test]
    fn decoded_raw_data_slices_the_buffer() {
        let w: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        let model = ModelProto {
            graph: Some(GraphProto {
                initializer: vec![tensor_f32("w", &[10, 100], &w)],
                ..Default::default()
            }),
            ..Default::default()
        };
        let bytes = Bytes::from(encode_model(&model));
        let range = bytes.as_ptr_range();
        let decoded = decode_model(bytes.clone(), Path::new("m.onnx")).expect("decode");
        let init = &decoded.graph.as_ref().expect("graph").initializer[0];
        assert!(
            range.contains(&init.raw_data.as_ptr()),
            "raw_data was copied"
        );
        assert_eq!(f32_data(init, Path::new("m.onnx")).expect("data"), w);
    }

    /// A mapped model is the model read whole, with the same hash, and letting go of its
    /// pages (released ranges, then all) changes none of the values read after.
    #[test]
    fn a_mapped_model_is_the_model_read_whole_after_its_pages_are_released() {
        // 12 MB: the decoder lets go of the pages behind it twice on the way (every 4 MiB),
        // the second tensor's header lies past those releases.
        let w: Vec<f32> = (0..3_000_000).map(|i| (i as f32).sin()).collect();
        let model = ModelProto {
            graph: Some(GraphProto {
                initializer: vec![
                    tensor_f32("a", &[3, 1_000_000], &w),
                    tensor_f32("b", &[3], &w[..3]),
                    tensor_f32("c", &[2, 500_000], &w[1_000_000..2_000_000]),
                ],
                ..Default::default()
            }),
            ..Default::default()
        };
        let dir = std::env::temp_dir().join(format!("elx-onnx-map-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("m.onnx");
        std::fs::write(&path, encode_model(&model)).expect("write");
        let (read, read_sha) = read_model(&path).expect("read");
        let (mapped, sha, pages) = map_model(&path).expect("map");
        assert_eq!(sha, read_sha);
        assert_eq!(mapped, read);
        let init =
            |m: &ModelProto, i: usize| m.graph.as_ref().expect("graph").initializer[i].clone();
        pages.release(&init(&mapped, 0).raw_data);
        pages.release(&[1, 2, 3]); // outside the map: nothing happens
        assert_eq!(f32_data(&init(&mapped, 0), &path).expect("a"), w);
        pages.release_all();
        assert_eq!(mapped, read, "values read back from the file after release");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
