//! How the base weights are laid out for tract's matrix products.
//!
//! tract packs a constant weight into the panel layout its kernels read once, at
//! optimization, but only under two conditions its constant folding sets: the weight is its
//! product's only consumer, and the packed form fits a small memory allowance (4 MiB) unless
//! it is no larger than the input. A decoder's LM head fails both: it shares the token
//! embedding with the Gather when the model ties them, and at vocabulary × hidden (113 MB
//! for SmolLM2-135M) its packed form is over the allowance. tract would then re-pack it on
//! every run, a third of a decode step and a fresh allocation of the whole matrix.
//! [`unshare_gathered_initializers`] and [`optimize`] make every constant weight packed once.

use crate::graph::onnx_pb::GraphProto;
use crate::graph::patch::NODE_PREFIX;
use crate::serve::backend::WeightFormat;
use std::collections::HashSet;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::ops::matmul::pack::OptMatMulPack;

/// Gives an initializer read by a Gather and by other nodes a copy of its own for the
/// others, so that the product reading it (through a Transpose, say) can fold it.
pub fn unshare_gathered_initializers(graph: &mut GraphProto) {
    let gathered: HashSet<String> = graph
        .node
        .iter()
        .filter(|n| n.op_type == "Gather")
        .filter_map(|n| n.input.first().cloned())
        .collect();
    let mut copies = Vec::new();
    for init in graph
        .initializer
        .iter()
        .filter(|t| gathered.contains(&t.name))
    {
        let read_elsewhere = graph
            .node
            .iter()
            .any(|n| n.op_type != "Gather" && n.input.contains(&init.name));
        if !read_elsewhere {
            continue;
        }
        let mut name = format!("{}.unshared", init.name);
        while graph
            .node
            .iter()
            .any(|n| n.input.contains(&name) || n.output.contains(&name))
            || graph.initializer.iter().any(|t| t.name == name)
        {
            name.push('_');
        }
        let mut copy = init.clone();
        copy.name = name;
        copies.push((init.name.clone(), copy));
    }
    for (original, copy) in copies {
        for n in graph.node.iter_mut().filter(|n| n.op_type != "Gather") {
            for i in n.input.iter_mut().filter(|i| **i == original) {
                *i = copy.name.clone();
            }
        }
        graph.initializer.push(copy);
    }
}

/// tract's optimization with the weights in `format` ([`quantize_q4_0`]), then the packing
/// of every constant weight done once ([`fold_constant_packs`]).
pub fn optimize(model: InferenceModel, format: WeightFormat) -> TractResult<TypedModel> {
    let mut typed = match format {
        WeightFormat::F32 => model.into_optimized()?,
        WeightFormat::Q4_0 => {
            let mut typed = model.into_typed()?.into_decluttered()?;
            quantize_q4_0(&mut typed)?;
            typed.into_optimized()?
        }
        WeightFormat::Q4_1 => {
            return Err(TractError::msg(
                "q4_1 weights are multiplied natively by ONNX Runtime only (tract has no Q4_1 kernel)",
            ));
        }
    };
    fold_constant_packs(&mut typed)?;
    Ok(typed)
}

/// Replaces each packing of a constant that tract left to run time (over its folding
/// allowance) by the packed constant. Returns how many were folded.
pub fn fold_constant_packs(model: &mut TypedModel) -> TractResult<usize> {
    let mut folded = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        if !node.op_is::<OptMatMulPack>() || node.inputs.len() != 1 {
            continue;
        }
        let Some(konst) = model.outlet_fact(node.inputs[0])?.konst.clone() else {
            continue;
        };
        let Some(packed) = node.op.eval_out_of_plan(tvec!(konst.into_tvalue()))? else {
            continue;
        };
        let exotic = model.outlet_fact(id.into())?.exotic_fact.clone();
        let name = node.name.clone();
        let mut patch = TypedModelPatch::default();
        let wire = patch.wire_node(
            name,
            Const::new_with_opt_exotic_fact(packed[0].clone().into_arc_tensor(), exotic)?,
            &[],
        )?;
        patch.shunt_outside(model, id.into(), wire[0])?;
        patch.apply(model)?;
        folded += 1;
    }
    if folded > 0 {
        model.compact()?;
    }
    Ok(folded)
}

/// Quantizes to Q4_0 (blocks of 32 along the reduced axis: 32 signed 4-bit values and one
/// f16 scale, 4.5 bits a weight) every constant weight of a matrix product of the base model,
/// which tract then multiplies natively. Left in f32: the patch's own products (their names
/// start with [`NODE_PREFIX`]: the subspace bases set the task's accuracy and are small),
/// products whose reduced axis is not a multiple of 32, and the token embedding the Gather
/// reads. Returns how many weights were quantized.
pub fn quantize_q4_0(model: &mut TypedModel) -> TractResult<usize> {
    use std::cell::Cell;
    use tract_onnx::tract_core::ops::einsum::einsum_matmul::{detect_all, flatten_all};
    let count = Cell::new(0usize);
    detect_all(model)?;
    Rewriter::<Cell<usize>>::default()
        .with_rule_for("eigenlorax_q4_0", quantize_rule)
        .rewrite(&count, model)?;
    flatten_all(model)?;
    Ok(count.get())
}

fn quantize_rule(
    count: &std::cell::Cell<usize>,
    model: &TypedModel,
    node: &TypedNode,
    prefix: &str,
    op: &tract_onnx::tract_core::ops::einsum::einsum_matmul::EinSumMatMul,
) -> TractResult<Option<TypedModelPatch>> {
    use tract_linalg::block_quant::{BlockQuant, BlockQuantFact, BlockQuantStorage, Q4_0};
    use tract_onnx::tract_core::ops::change_axes::{AxisOp, InOut};
    if node.inputs.len() != 2 || node.name.starts_with(NODE_PREFIX) {
        return Ok(None);
    }
    for (slot, fact) in model.node_input_facts(node.id)?.iter().enumerate() {
        let Some(w) = fact.konst.as_ref() else {
            continue;
        };
        if w.rank() != 2 || w.datum_type() != f32::datum_type() {
            continue;
        }
        let k_pos = op.k_axis().inputs[slot][0];
        let k = w.shape()[k_pos];
        if k % Q4_0.block_len() != 0 {
            continue;
        }
        let mut patch = TypedModelPatch::default();
        let mut taps = patch.taps(model, &node.inputs)?;
        if k_pos == 0 {
            // Blocks run along the reduced axis, which must be the last: move it there (the
            // transposed constant is folded before the next pass quantizes it).
            taps[slot] = patch.wire_node(
                format!("{}.k_last_{slot}", node.name),
                AxisOp::Move(1, 0),
                &[taps[slot]],
            )?[0];
            let mut moved = op.clone();
            moved.op.axes = op
                .op
                .axes
                .clone()
                .remove_axis_occurency(InOut::In(slot), 0)?
                .with_extra_axis_occurency(op.k_axis, InOut::In(slot), 1)?;
            let out = patch.wire_node(prefix, moved, &taps)?;
            patch.shunt_outside(model, node.id.into(), out[0])?;
            return Ok(Some(patch));
        }
        let (m, k) = (w.shape()[0], w.shape()[1]);
        let blocks = Q4_0.quant_f32(w.try_as_plain_ram()?.as_slice::<f32>()?)?;
        let storage = BlockQuantStorage::new(Box::new(Q4_0), m, k, Arc::new(blocks))?;
        let bq_fact = Box::new(BlockQuantFact::new(Box::new(Q4_0), tvec!(1, m, k)));
        let source = &model.node(node.inputs[slot].node).name;
        let weights = patch.wire_node(
            format!("{source}.q4_0"),
            Const::new_with_exotic_fact(
                Arc::new(storage.into_tensor_with_shape(f32::datum_type(), &[1, m, k])),
                bq_fact,
            )?,
            &[],
        )?[0];
        let act = patch.tap_model(model, node.inputs[1 - slot])?;
        // The block-quantized tensor is [group = 1, m, k]: the weight gains a group axis.
        let mut quantized = op.op.clone();
        quantized.axes = quantized.axes.with_extra_axis('G', InOut::In(slot), 0)?;
        let inputs = if slot == 0 {
            [weights, act]
        } else {
            [act, weights]
        };
        let out = patch.wire_node(prefix, quantized, &inputs)?;
        patch.shunt_outside(model, node.id.into(), out[0])?;
        count.set(count.get() + 1);
        return Ok(Some(patch));
    }
    Ok(None)
}
