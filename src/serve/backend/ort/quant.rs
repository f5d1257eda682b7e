//! 4-bit base weights on ONNX Runtime: each constant weight of a base-model matrix product
//! becomes ONNX Runtime's `MatMulNBits` (domain `com.microsoft`), which multiplies blocks of
//! 32 packed 4-bit values natively.
//!
//! * [`WeightFormat::Q4_0`]: symmetric blocks, `w = d·(q − 8)`, one f32 scale a block (5 bits
//!   a weight).
//! * [`WeightFormat::Q4_1`]: blocks with an offset, `w = d·q + m` (llama.cpp's Q4_1).
//!   `MatMulNBits` takes only integer zero points on its fast path, so the offsets are a
//!   second, small product: `y = MatMulNBits(x; q, d) + s(x)·M`, where `s(x)` sums `x` over
//!   each block (K/32 values a row, shared by the products that read the same `x`) and M
//!   holds the offsets (K/32 × N). f32 scales and offsets: 6 bits a weight. A model imported
//!   from a Q4_1 GGUF file holds the dequantized blocks, and quantizing them again gives back
//!   the file's own blocks (every block of llama.cpp's quantizer reaches 0 and 15), so the
//!   engine multiplies the weights the GGUF file shipped.
//! * The LM head (the product that writes a graph output, tied to the token embedding or
//!   not) keeps 8 bits: Q8_0 blocks, `w = d·q` with q in −127..=127 (one f32 scale, 9 bits
//!   a weight), the format GGUF files of Q4 models ship their token embedding in, which a
//!   4-bit head would quantize again (SmolLM2's held-out perplexity: +2.9% with a 4-bit head).
//! * The token embedding a `Gather` reads is stored in Q8_0 too (i8 codes and a scale a
//!   block, looked up row by row and multiplied out in f32, exactly): a quarter of its f32
//!   bytes (113 MB for SmolLM2's 49,152 × 576), and exactly the GGUF file's blocks for a
//!   model imported from one. ONNX Runtime 1.22 has no 8-bit `GatherBlockQuantized`.
//!
//! The 4-bit products keep f32 activations (`accuracy_level` 0), so they are those of the f32
//! model that holds the dequantized blocks. ONNX Runtime multiplies 8-bit blocks only with
//! 8-bit activations (level 4: each block of 32 inputs quantized with its own scale, as
//! llama.cpp does for its Q4 and Q8 dot products), so the head's are. 8-bit activations
//! everywhere decode about a fifth faster but cost SmolLM2 3.5% perplexity (BENCHMARKS.md),
//! over the 2% the decoder issue allows.
//!
//! Left in f32, as on tract: the patch's own products (names starting with
//! [`NODE_PREFIX`]: the subspace bases set the task's accuracy and are small), products
//! whose reduced axis is not a multiple of 32, and (with [`Head::LikeBody`]) the token
//! embedding. A tied LM head (`MatMul(x, Transpose(embedding))`) is quantized from the
//! embedding, as the lookup is.

use crate::error::{Error, Result};
use crate::graph::llama::INPUT_IDS;
use crate::graph::onnx::{
    FLOAT, MappedPages, attr_int, f32_data, node, tensor_f32, tensor_i8, tensor_u8, transpose,
};
use crate::graph::patch::NODE_PREFIX;
use crate::graph::pb::{ModelProto, OperatorSetIdProto, TensorProto};
use crate::serve::backend::WeightFormat;
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// Values a block shares one scale over (the reduced axis).
pub const BLOCK: usize = 32;

/// How the LM head is stored when the body is 4-bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// Q8_0 blocks with 8-bit activations, and the token embedding in Q8_0 (what
    /// [`quantize_matmuls`] serves).
    Q8_0,
    /// The body's format and f32 activations, like every other product (exact on a model
    /// whose head holds blocks of that format), and the token embedding in f32.
    LikeBody,
}

/// How one product's weight is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scheme {
    Q4_0,
    Q4_1,
    Q8_0,
}

impl Scheme {
    fn bits(self) -> usize {
        match self {
            Scheme::Q8_0 => 8,
            _ => 4,
        }
    }

    /// `MatMulNBits`' `accuracy_level`: f32 activations (0) where ONNX Runtime allows it.
    fn accuracy(self) -> i64 {
        match self {
            Scheme::Q8_0 => 4,
            _ => 0,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Scheme::Q4_0 => "q4_0",
            Scheme::Q4_1 => "q4_1",
            Scheme::Q8_0 => "q8_0",
        }
    }
}

/// Prefix of the initializers this module shares between products.
const NODE_PREFIX_QUANT: &str = "eigenlorax.quant/";

/// Domain of ONNX Runtime's contrib operators.
const MS_DOMAIN: &str = "com.microsoft";

/// [`quantize_matmuls_with`] with the LM head in Q8_0, as the engine serves it.
pub fn quantize_matmuls(model: &mut ModelProto, format: WeightFormat) -> Result<usize> {
    quantize_matmuls_with(model, format, Head::Q8_0)
}

/// [`quantize_matmuls`] for a model whose weights are slices of a mapped file: each f32
/// weight's pages are let go of as soon as it is quantized, so the f32 weights are never
/// resident together.
pub fn quantize_matmuls_releasing(
    model: &mut ModelProto,
    format: WeightFormat,
    pages: Option<&MappedPages>,
) -> Result<usize> {
    quantize_model(model, format, Head::Q8_0, &|data| {
        if let Some(p) = pages {
            p.release(data)
        }
    })
}

/// Replaces every constant weight of a base-model `MatMul` by `MatMulNBits` blocks in
/// `format`, the LM head's as `head` says (see the module documentation). Returns how many
/// weights were quantized; `F32` changes nothing.
pub fn quantize_matmuls_with(
    model: &mut ModelProto,
    format: WeightFormat,
    head: Head,
) -> Result<usize> {
    quantize_model(model, format, head, &|_| {})
}

/// The quantizer; `release` is called on each f32 weight's bytes once they are read.
fn quantize_model(
    model: &mut ModelProto,
    format: WeightFormat,
    head: Head,
    release: &dyn Fn(&[u8]),
) -> Result<usize> {
    let body = match format {
        WeightFormat::F32 => return Ok(0),
        WeightFormat::Q4_0 => Scheme::Q4_0,
        WeightFormat::Q4_1 => Scheme::Q4_1,
    };
    let where_ = Path::new("the base model");
    let Some(graph) = model.graph.as_mut() else {
        return Err(Error::Internal("quantizing a model without a graph".into()));
    };
    let inits: HashMap<String, usize> = graph
        .initializer
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.clone(), i))
        .collect();
    // Transposes of an initializer with perm [1, 0] (a tied LM head reads the embedding so).
    let transposed: HashMap<String, String> = graph
        .node
        .iter()
        .filter(|n| n.op_type == "Transpose" && n.input.len() == 1 && n.output.len() == 1)
        .filter(|n| inits.contains_key(&n.input[0]))
        .filter(|n| {
            let perm = crate::graph::onnx::get_attr(n, "perm").map(|a| a.ints.clone());
            perm.is_none_or(|p| p == [1, 0])
        })
        .map(|n| (n.output[0].clone(), n.input[0].clone()))
        .collect();

    let graph_outputs: HashSet<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    let mut nodes = Vec::with_capacity(graph.node.len());
    let mut block_sums: HashMap<String, String> = HashMap::new();
    let mut indicators: HashSet<usize> = HashSet::new();
    let mut expanders: HashSet<usize> = HashSet::new();
    let mut new_inits: Vec<TensorProto> = Vec::new();
    let mut quantized = 0;
    for n in std::mem::take(&mut graph.node) {
        if head == Head::Q8_0
            && let Some(emb) = embedding_lookup(&n, graph, &inits)
        {
            let t = &graph.initializer[emb];
            let (v, h) = (t.dims[0] as usize, t.dims[1] as usize);
            let blocks = quantize_rows(t, v, h, Scheme::Q8_0, release)?;
            nodes.extend(quantized_lookup(
                &n,
                v,
                h,
                blocks,
                &mut new_inits,
                &mut expanders,
            ));
            quantized += 1;
            continue;
        }
        let weight = (n.op_type == "MatMul"
            && n.domain.is_empty()
            && !n.name.starts_with(NODE_PREFIX)
            && n.input.len() == 2
            && n.output.len() == 1)
            .then(|| {
                if let Some(&i) = inits.get(&n.input[1]) {
                    Some((i, false))
                } else {
                    transposed.get(&n.input[1]).map(|src| (inits[src], true))
                }
            })
            .flatten();
        let Some((index, stored_by_output)) = weight else {
            nodes.push(n);
            continue;
        };
        let t = &graph.initializer[index];
        if t.data_type != FLOAT || t.dims.len() != 2 {
            nodes.push(n);
            continue;
        }
        let (rows, cols) = (t.dims[0] as usize, t.dims[1] as usize);
        // The product is x [.., K] · W [K, N]; a transposed initializer is stored [N, K].
        let (k, n_out) = if stored_by_output {
            (cols, rows)
        } else {
            (rows, cols)
        };
        if k % BLOCK != 0 || k == 0 || n_out == 0 {
            nodes.push(n);
            continue;
        }
        let is_head = n.output.iter().any(|o| graph_outputs.contains(o));
        let scheme = if is_head && head == Head::Q8_0 {
            Scheme::Q8_0
        } else {
            body
        };
        // Row j of `by_output` is output j's K weights, the layout MatMulNBits packs.
        let blocks = if stored_by_output {
            quantize_rows(t, n_out, k, scheme, release)?
        } else {
            let values = f32_data(t, where_)?;
            release(&t.raw_data);
            quantize(&transpose(k, n_out, &values), n_out, k, scheme)
        };
        let base = format!("{}.{}", n.name, scheme.name());
        let (b_name, s_name) = (format!("{base}.blocks"), format!("{base}.scales"));
        let nb = k / BLOCK;
        let blob = BLOCK * scheme.bits() / 8;
        new_inits.push(tensor_u8(&b_name, &[n_out, nb, blob], blocks.packed));
        new_inits.push(tensor_f32(&s_name, &[n_out * nb], &blocks.scales));
        let mut inputs = vec![n.input[0].clone(), b_name, s_name];
        let product = if scheme == Scheme::Q4_1 {
            // Zero points of 0 (4 bits each, packed two a byte per output row).
            let z_name = format!("{base}.zero_points");
            new_inits.push(tensor_u8(
                &z_name,
                &[n_out * nb.div_ceil(2)],
                vec![0; n_out * nb.div_ceil(2)],
            ));
            inputs.push(z_name);
            format!("{base}.scaled")
        } else {
            n.output[0].clone()
        };
        let input_refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let mut q = node(
            "MatMulNBits",
            &base,
            &input_refs,
            &[&product],
            vec![
                attr_int("K", k as i64),
                attr_int("N", n_out as i64),
                attr_int("bits", scheme.bits() as i64),
                attr_int("block_size", BLOCK as i64),
                attr_int("accuracy_level", scheme.accuracy()),
            ],
        );
        q.domain = MS_DOMAIN.into();
        nodes.push(q);
        if let Some(mins) = blocks.mins {
            // y += s(x)·M: the block sums s(x) = x·S [.., K/32] (S the K × K/32 indicator)
            // are computed once per input and shared by the products that read it (q, k and
            // v; gate and up), since each extra node costs a decode step more than its flops.
            let sums = match block_sums.get(&n.input[0]) {
                Some(s) => s.clone(),
                None => {
                    let indicator = format!("{NODE_PREFIX_QUANT}block_indicator_{k}");
                    if indicators.insert(k) {
                        new_inits.push(tensor_f32(&indicator, &[k, nb], &block_indicator(k)));
                    }
                    let sums = format!("{base}.block_sums");
                    nodes.push(node(
                        "MatMul",
                        &sums,
                        &[&n.input[0], &indicator],
                        &[&sums],
                        vec![],
                    ));
                    block_sums.insert(n.input[0].clone(), sums.clone());
                    sums
                }
            };
            let (offsets, offset) = (format!("{base}.offsets"), format!("{base}.offset"));
            // M is K/32 × N: the offsets [N, K/32] transposed.
            new_inits.push(tensor_f32(
                &offsets,
                &[nb, n_out],
                &transpose(n_out, nb, &mins),
            ));
            nodes.push(node(
                "MatMul",
                &offset,
                &[&sums, &offsets],
                &[&offset],
                vec![],
            ));
            nodes.push(node(
                "Add",
                &n.output[0],
                &[&product, &offset],
                &[&n.output[0]],
                vec![],
            ));
        }
        quantized += 1;
    }
    graph.node = nodes;
    graph.initializer.extend(new_inits);
    // Drop what no node reads any more: the f32 weights and the LM head's Transpose.
    loop {
        let read: HashSet<&str> = graph
            .node
            .iter()
            .flat_map(|n| n.input.iter().map(String::as_str))
            .chain(graph.output.iter().map(|o| o.name.as_str()))
            .collect();
        let dead: HashSet<usize> = graph
            .node
            .iter()
            .enumerate()
            .filter(|(_, n)| {
                n.op_type == "Transpose" && n.output.iter().all(|o| !read.contains(o.as_str()))
            })
            .map(|(i, _)| i)
            .collect();
        let unread: HashSet<String> = graph
            .initializer
            .iter()
            .filter(|t| !read.contains(t.name.as_str()))
            .map(|t| t.name.clone())
            .collect();
        if dead.is_empty() && unread.is_empty() {
            break;
        }
        let mut i = 0;
        graph.node.retain(|_| {
            i += 1;
            !dead.contains(&(i - 1))
        });
        let inputs: HashSet<&str> = graph.input.iter().map(|v| v.name.as_str()).collect();
        // An initializer that is also a graph input stays (the caller may feed it).
        let drop: HashSet<String> = unread
            .into_iter()
            .filter(|n| !inputs.contains(n.as_str()))
            .collect();
        graph.initializer.retain(|t| !drop.contains(&t.name));
        if dead.is_empty() {
            break;
        }
    }
    if quantized > 0 && !model.opset_import.iter().any(|o| o.domain == MS_DOMAIN) {
        model.opset_import.push(OperatorSetIdProto {
            domain: MS_DOMAIN.into(),
            version: 1,
        });
    }
    Ok(quantized)
}

/// The initializer a `Gather` looks rows up in, when it is a token embedding this module
/// stores in Q8_0: an f32 matrix gathered along its first axis by the graph input
/// `input_ids`, rows a multiple of 32 long. Other tables (a decoder's rotary cos and sin,
/// gathered by `position_ids`; position embeddings) stay f32: they are small, and 8 bits
/// would change every attention score.
fn embedding_lookup(
    n: &crate::graph::pb::NodeProto,
    graph: &crate::graph::pb::GraphProto,
    inits: &HashMap<String, usize>,
) -> Option<usize> {
    if n.op_type != "Gather"
        || !n.domain.is_empty()
        || n.name.starts_with(NODE_PREFIX)
        || n.input.len() != 2
        || n.input[1] != INPUT_IDS
        || n.output.len() != 1
    {
        return None;
    }
    let axis = crate::graph::onnx::get_attr(n, "axis").map_or(0, |a| a.i);
    let &i = inits.get(&n.input[0])?;
    let t = &graph.initializer[i];
    let fits = axis == 0
        && t.data_type == FLOAT
        && t.dims.len() == 2
        && t.dims[0] > 0
        && t.dims[1] > 0
        && (t.dims[1] as usize).is_multiple_of(BLOCK);
    fits.then_some(i)
}

/// The nodes that replace `Gather(embedding, ids)` by a lookup in Q8_0 blocks: the rows'
/// codes (i8) and their blocks' scales are gathered, the scales spread to every value of
/// their block (a product with the 0/1 matrix E [H/32, H], exact: each output is one scale
/// times 1 plus zeros) and multiplied by the codes. Exact on an embedding that holds Q8_0
/// blocks (a GGUF file's), whose quantization gives back those blocks.
fn quantized_lookup(
    n: &crate::graph::pb::NodeProto,
    v: usize,
    h: usize,
    blocks: Blocks,
    new_inits: &mut Vec<TensorProto>,
    expanders: &mut HashSet<usize>,
) -> Vec<crate::graph::pb::NodeProto> {
    let nb = h / BLOCK;
    let name = if n.name.is_empty() {
        &n.output[0]
    } else {
        &n.name
    };
    let base = format!("{name}.q8_0");
    let codes: Vec<i8> = blocks.packed.iter().map(|&c| (c ^ 0x80) as i8).collect();
    let (c_name, s_name) = (format!("{base}.codes"), format!("{base}.scales"));
    new_inits.push(tensor_i8(&c_name, &[v, h], &codes));
    new_inits.push(tensor_f32(&s_name, &[v, nb], &blocks.scales));
    let expander = format!("{NODE_PREFIX_QUANT}block_expander_{h}");
    if expanders.insert(h) {
        new_inits.push(tensor_f32(
            &expander,
            &[nb, h],
            &transpose(h, nb, &block_indicator(h)),
        ));
    }
    let ids = n.input[1].as_str();
    let [rows, row_scales, rows_f32, spread] =
        ["codes", "block_scales", "codes_f32", "scales"].map(|s| format!("{base}.{s}_gathered"));
    vec![
        node("Gather", &rows, &[&c_name, ids], &[&rows], vec![]),
        node(
            "Gather",
            &row_scales,
            &[&s_name, ids],
            &[&row_scales],
            vec![],
        ),
        node(
            "Cast",
            &rows_f32,
            &[&rows],
            &[&rows_f32],
            vec![attr_int("to", FLOAT as i64)],
        ),
        node(
            "MatMul",
            &spread,
            &[&row_scales, &expander],
            &[&spread],
            vec![],
        ),
        node(
            "Mul",
            &n.output[0],
            &[&rows_f32, &spread],
            &[&n.output[0]],
            vec![],
        ),
    ]
}

/// Quantizes an f32 initializer stored by output ([N, K]: row j is output j's K weights) a
/// slice of rows at a time, letting go of each slice's bytes once read, so that the f32 rows
/// are never held together (the tied head and the lookup of SmolLM2's 49,152-token
/// vocabulary: 113 MB).
fn quantize_rows(
    t: &TensorProto,
    n: usize,
    k: usize,
    scheme: Scheme,
    release: &dyn Fn(&[u8]),
) -> Result<Blocks> {
    let row_bytes = k * 4;
    if t.raw_data.len() != n * row_bytes {
        // `float_data`, or a length f32_data names in its error.
        let values = f32_data(t, Path::new("the base model"))?;
        return Ok(quantize(&values, n, k, scheme));
    }
    let rows_per_slice = ((4 << 20) / row_bytes).max(1);
    let nb = k / BLOCK;
    let mut all = Blocks {
        packed: Vec::with_capacity(n * nb * BLOCK * scheme.bits() / 8),
        scales: Vec::with_capacity(n * nb),
        mins: (scheme == Scheme::Q4_1).then(|| Vec::with_capacity(n * nb)),
    };
    for bytes in t.raw_data.chunks(rows_per_slice * row_bytes) {
        let values: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        release(bytes);
        let part = quantize(&values, bytes.len() / row_bytes, k, scheme);
        all.packed.extend_from_slice(&part.packed);
        all.scales.extend_from_slice(&part.scales);
        if let (Some(m), Some(p)) = (all.mins.as_mut(), part.mins) {
            m.extend_from_slice(&p);
        }
    }
    Ok(all)
}

/// Quantized blocks of an N × K matrix (row j: output j's weights along K).
struct Blocks {
    /// N × K/32 blocks of packed codes: 4-bit codes two a byte (value 2i in the low nibble,
    /// 2i + 1 in the high one), 8-bit codes offset by 128 (`MatMulNBits`' default zero point).
    packed: Vec<u8>,
    /// One scale a block, N × K/32.
    scales: Vec<f32>,
    /// One offset a block (Q4_1 only), N × K/32.
    mins: Option<Vec<f32>>,
}

/// Quantizes each block of 32 as llama.cpp's reference quantizers do (Q4_0: the scale maps
/// the value of largest magnitude to −8; Q4_1: the block's minimum and range; Q8_0: the
/// largest magnitude to 127).
fn quantize(by_output: &[f32], n: usize, k: usize, scheme: Scheme) -> Blocks {
    let nb = k / BLOCK;
    let blob = BLOCK * scheme.bits() / 8;
    let mut packed = vec![0u8; n * nb * blob];
    let mut scales = vec![0f32; n * nb];
    let mut mins = (scheme == Scheme::Q4_1).then(|| vec![0f32; n * nb]);
    let mut q = [0u8; BLOCK];
    for (b, block) in by_output.chunks_exact(BLOCK).enumerate() {
        match scheme {
            Scheme::Q4_1 => {
                let lo = block.iter().copied().fold(f32::INFINITY, f32::min);
                let hi = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let d = (hi - lo) / 15.0;
                let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
                for (qi, &x) in q.iter_mut().zip(block) {
                    *qi = (((x - lo) * inv + 0.5) as i32).clamp(0, 15) as u8;
                }
                scales[b] = d;
                if let Some(m) = mins.as_mut() {
                    m[b] = lo;
                }
            }
            Scheme::Q4_0 => {
                let signed_max = block
                    .iter()
                    .copied()
                    .fold(0f32, |m, x| if x.abs() > m.abs() { x } else { m });
                let d = signed_max / -8.0;
                let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
                for (qi, &x) in q.iter_mut().zip(block) {
                    *qi = ((x * inv + 8.5) as i32).clamp(0, 15) as u8;
                }
                scales[b] = d;
            }
            Scheme::Q8_0 => {
                let amax = block.iter().fold(0f32, |m, x| m.max(x.abs()));
                let d = amax / 127.0;
                let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
                for (qi, &x) in q.iter_mut().zip(block) {
                    *qi = ((x * inv).round() as i32)
                        .clamp(-127, 127)
                        .wrapping_add(128) as u8;
                }
                scales[b] = d;
            }
        }
        let out = &mut packed[b * blob..(b + 1) * blob];
        if scheme.bits() == 8 {
            out.copy_from_slice(&q);
        } else {
            for (o, pair) in out.iter_mut().zip(q.chunks_exact(2)) {
                *o = pair[0] | (pair[1] << 4);
            }
        }
    }
    Blocks {
        packed,
        scales,
        mins,
    }
}

/// The K × K/32 matrix that sums each block of 32 values.
fn block_indicator(k: usize) -> Vec<f32> {
    let nb = k / BLOCK;
    let mut s = vec![0f32; k * nb];
    for i in 0..k {
        s[i * nb + i / BLOCK] = 1.0;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dequantize(b: &Blocks, n: usize, k: usize, scheme: Scheme) -> Vec<f32> {
        let mut w = vec![0f32; n * k];
        for (i, wi) in w.iter_mut().enumerate() {
            let blk = i / BLOCK;
            let q = if scheme == Scheme::Q8_0 {
                f32::from(b.packed[i]) - 128.0
            } else {
                let byte = b.packed[blk * BLOCK / 2 + (i % BLOCK) / 2];
                f32::from(if i % 2 == 0 { byte & 15 } else { byte >> 4 })
            };
            *wi = match (&b.mins, scheme) {
                (Some(m), _) => b.scales[blk] * q + m[blk],
                (None, Scheme::Q4_0) => b.scales[blk] * (q - 8.0),
                (None, _) => b.scales[blk] * q,
            };
        }
        w
    }

    /// The largest error relative to the value (to 1e-3 for values near zero).
    fn worst_relative_error(want: &[f32], got: &[f32]) -> f32 {
        want.iter()
            .zip(got)
            .map(|(a, b)| (a - b).abs() / a.abs().max(1e-3))
            .fold(0f32, f32::max)
    }

    #[test]
    fn q4_1_gives_back_the_blocks_of_a_q4_1_file() {
        // Blocks as llama.cpp's Q4_1 stores them: f16 scale and minimum, q in 0..=15 with
        // both ends reached; dequantized in f32 as the importer does.
        let mut rng = crate::util::GaussianRng::new(7);
        let (n, k) = (5, 96);
        let mut w = vec![0f32; n * k];
        for block in w.chunks_exact_mut(BLOCK) {
            let d = half::f16::from_f32(0.001 + 0.02 * rng.next_normal().abs() as f32).to_f32();
            let m = half::f16::from_f32(-0.1 * rng.next_normal().abs() as f32).to_f32();
            for (i, x) in block.iter_mut().enumerate() {
                let q = match i {
                    3 => 0,
                    17 => 15,
                    _ => (rng.next_normal().abs() * 5.0).min(15.0) as u32,
                };
                *x = q as f32 * d + m;
            }
        }
        let b = quantize(&w, n, k, Scheme::Q4_1);
        let back = dequantize(&b, n, k, Scheme::Q4_1);
        let worst = worst_relative_error(&w, &back);
        assert!(worst < 1e-5, "relative error {worst}");
    }

    #[test]
    fn q4_0_error_is_within_a_step() {
        let mut rng = crate::util::GaussianRng::new(3);
        let (n, k) = (4, 64);
        let w: Vec<f32> = (0..n * k).map(|_| rng.next_normal() as f32).collect();
        let b = quantize(&w, n, k, Scheme::Q4_0);
        let back = dequantize(&b, n, k, Scheme::Q4_0);
        for (blk, (a, r)) in w.chunks(BLOCK).zip(back.chunks(BLOCK)).enumerate() {
            let step = b.scales[blk].abs();
            for (x, y) in a.iter().zip(r) {
                // Half a step, except at +8 steps, which clamps to +7.
                assert!((x - y).abs() <= step + 1e-6, "{x} vs {y}, step {step}");
            }
        }
    }

    #[test]
    fn q8_0_gives_back_the_blocks_of_a_q8_0_file() {
        let mut rng = crate::util::GaussianRng::new(5);
        let (n, k) = (3, 64);
        let mut w = vec![0f32; n * k];
        for block in w.chunks_exact_mut(BLOCK) {
            let d = half::f16::from_f32(0.01 * (1.0 + rng.next_normal().abs()) as f32).to_f32();
            for (i, x) in block.iter_mut().enumerate() {
                let q = if i == 9 {
                    -127
                } else {
                    ((rng.next_normal() * 50.0) as i32).clamp(-127, 127)
                };
                *x = q as f32 * d;
            }
        }
        let b = quantize(&w, n, k, Scheme::Q8_0);
        let back = dequantize(&b, n, k, Scheme::Q8_0);
        let worst = worst_relative_error(&w, &back);
        assert!(worst < 1e-5, "relative error {worst}");
    }
}
