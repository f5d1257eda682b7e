#!/usr/bin/env python3
"""Self-checks of tools/elx_reference.py: identities, and the PEFT reader against PEFT itself.

  python3 tools/test_elx_reference.py        (from the repo root; about 10 s)

The reader check needs torch + peft + transformers and is skipped (with a message) without them.
"""

import os
import sys
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import elx_reference as ref  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AD = os.path.join(ROOT, "models", "fixtures", "adapters")
TASKS = [os.path.join(AD, f"task{i}") for i in range(6)]


def largest_abs_positive(v):
    return v[int(np.argmax(np.abs(v)))] > 0


class RngTest(unittest.TestCase):
    def test_splitmix_check_values(self):
        g = ref.SplitMix64(0)
        self.assertEqual(g.next_u64(), 0xE220A8397B1DCDAF)
        self.assertEqual(g.next_u64(), 0x6E789E6AA1B965F4)

    def test_normals_moments(self):
        x = ref.SplitMix64(3).normals(20000)
        self.assertLess(abs(x.mean()), 0.03)
        self.assertLess(abs(x.std() - 1.0), 0.03)


class MathTest(unittest.TestCase):
    def setUp(self):
        self.ads = [ref.PeftAdapter(d) for d in TASKS]

    def test_canonicalize_preserves_delta_and_balances(self):
        for ad in self.ads:
            for a, b in ad.modules.values():
                a2, b2 = ref.canonicalize(a, b)
                dw = b @ a
                self.assertLess(np.linalg.norm(b2 @ a2 - dw) / np.linalg.norm(dw), 1e-12)
                ga, gb = a2 @ a2.T, b2.T @ b2
                np.testing.assert_allclose(ga, gb, atol=1e-12 * np.abs(ga).max())
                np.testing.assert_allclose(ga, np.diag(np.diag(ga)), atol=1e-12 * np.abs(ga).max())
                for j in range(b2.shape[1]):
                    self.assertTrue(largest_abs_positive(b2[:, j]))

    def test_extract_bases_orthonormal_signed_and_spectra(self):
        for canon in (True, False):
            sub = ref.extract(self.ads, k=4, canonical=canon)
            for name, m in sub.items():
                va, vb = m["V_A"], m["V_B"]
                np.testing.assert_allclose(va @ va.T, np.eye(4), atol=1e-12)
                np.testing.assert_allclose(vb.T @ vb, np.eye(4), atol=1e-12)
                for i in range(4):
                    self.assertTrue(largest_abs_positive(va[i]))
                    self.assertTrue(largest_abs_positive(vb[:, i]))
                pairs = [ad.modules[name] for ad in self.ads]
                if canon:
                    pairs = [ref.canonicalize(a, b) for a, b in pairs]
                stack = np.concatenate([a for a, _ in pairs])
                ev = np.sort(np.linalg.eigvalsh(stack @ stack.T))[::-1]
                np.testing.assert_allclose(m["sigma_A"] ** 2, np.clip(ev, 0, None), atol=1e-12 * ev[0])
                # V_A spans the top-4 eigenvectors of the Gram stackᵀ·stack
                w, u = np.linalg.eigh(stack.T @ stack)
                top = u[:, np.argsort(w)[::-1][:4]]
                self.assertLess(np.linalg.norm(top @ top.T - va.T @ va), 1e-9)

    def test_gram_eigh_method_matches_svd(self):
        # The benchmark baseline (Gram in the smaller dimension + eigh) finds the SVD's top-K
        # subspaces and top spectrum; on the fixtures every side's Gram is the n x n one for
        # the A side (Σr < in) and both orientations occur across the two cases.
        for kw in ({"k": 4}, {"energy": 0.9, "canonical": False}):
            svd = ref.extract(self.ads, **kw)
            ge = ref.extract(self.ads, method="gram-eigh", **kw)
            for name in svd:
                for key in ("V_A", "V_B"):
                    x, y = svd[name][key], ge[name][key]
                    if key == "V_B":
                        x, y = x.T, y.T
                    self.assertEqual(x.shape, y.shape)
                    self.assertLess(ref.max_sin_angle(x, y), 1e-10, f"{name} {key}")
                for key in ("sigma_A", "sigma_B"):
                    s1, s2 = svd[name][key], ge[name][key]
                    k = 4
                    np.testing.assert_allclose(s2[:k], s1[:k], rtol=0, atol=1e-10 * s1[0])

    def test_full_k_reconstructs_every_adapter(self):
        sub = ref.extract(self.ads, k=24)
        refd = {f"{n}.{k}": m[k] for n, m in sub.items() for k in ("V_A", "V_B")}
        for ad in self.ads:
            _, errs = ref.project(ad, refd)
            self.assertLess(max(errs.values()), 1e-10)

    def test_projection_is_idempotent_in_canonical_gauge(self):
        sub = ref.extract(self.ads, k=4, center=True, pseudo=2, seed=7)
        for name, m in sub.items():
            va, vb = m["V_A"], m["V_B"]
            self.assertEqual((va.shape[0], vb.shape[1]), (7, 7))  # 4 principal + mean + 2 pseudo
            np.testing.assert_allclose(va @ va.T, np.eye(7), atol=1e-12)
            np.testing.assert_allclose(vb.T @ vb, np.eye(7), atol=1e-12)
            a, b = self.ads[0].modules[name]
            ga, gb = ref.project_module(a, b, va, vb)
            ga2, gb2 = ref.project_module(ga @ va, vb @ gb, va, vb)
            np.testing.assert_allclose(ga2, ga, atol=1e-12)
            np.testing.assert_allclose(gb2, gb, atol=1e-12)
            # the projection is the orthogonal one: ΔŴ = P_B·ΔW·P_A
            dwh = vb @ gb @ ga @ va
            np.testing.assert_allclose(dwh, vb @ vb.T @ (b @ a) @ va.T @ va, atol=1e-12)

    def test_pseudo_draws_are_the_rng_stream(self):
        # with K = 0 principal and no mean, the first pseudo-PC is the first `dim` normals, normalized
        stack = np.zeros((3, 5))
        stack[0, 0] = 1.0
        v, _, kk, _, p = ref.side_basis(stack, 0, None, False, 1, 11)
        g = ref.SplitMix64(11).normals(5)
        np.testing.assert_allclose(v[0], g / np.linalg.norm(g), atol=1e-15)
        self.assertEqual((kk, p), (0, 1))

    def test_energy_rule_is_minimal(self):
        s = np.array([3.0, 2.0, 1.0, 0.5])
        e = s ** 2 / (s ** 2).sum()
        for t in (0.5, 0.9, 0.99, 1.0):
            k = ref.choose_k(s, None, t)
            self.assertGreaterEqual(e[:k].sum(), t - 1e-15)
            self.assertTrue(k == 1 or e[:k - 1].sum() < t)

    def test_pattern_key_semantics(self):
        keys = ["layer.1.attention.self.value", "value"]
        self.assertEqual(ref.peft_pattern_key(keys, "encoder.layer.1.attention.self.value"), keys[0])
        self.assertEqual(ref.peft_pattern_key(keys, "encoder.layer.0.attention.self.value"), "value")
        self.assertIsNone(ref.peft_pattern_key(keys, "encoder.layer.0.attention.self.query"))
        self.assertIsNone(ref.peft_pattern_key(["alue"], "encoder.layer.0.attention.self.value"))


class ReaderAgainstPeft(unittest.TestCase):
    """ΔW from our reader (B'·A') equals PEFT's own get_delta_weight on every fixture variant."""

    def test_delta_weights_match_peft(self):
        try:
            import torch
            from peft import PeftModel
            from transformers import BertModel, GPT2Model
        except ImportError as e:  # pragma: no cover
            self.skipTest(f"torch/peft/transformers missing: {e}")
        torch.set_num_threads(1)
        cases = [("task0", BertModel, "tiny-bert"), ("variants/rslora", BertModel, "tiny-bert"),
                 ("variants/rank_pattern", BertModel, "tiny-bert"), ("variants/task2_fp16", BertModel, "tiny-bert"),
                 ("variants/task2_bf16", BertModel, "tiny-bert"),
                 ("variants/gpt2_fan_in_fan_out", GPT2Model, "tiny-gpt2")]
        for sub, cls, base_dir in cases:
            base = cls.from_pretrained(os.path.join(ROOT, "models", "fixtures", base_dir))
            pm = PeftModel.from_pretrained(base, os.path.join(AD, sub))
            ours = ref.PeftAdapter(os.path.join(AD, sub))
            seen = 0
            for name, mod in pm.base_model.model.named_modules():
                if hasattr(mod, "get_delta_weight") and name in ours.modules:
                    dw = mod.get_delta_weight("default").detach().double().numpy()
                    a, b = ours.modules[name]
                    mine = b @ a
                    if ours.config.get("fan_in_fan_out"):
                        mine = mine.T
                    tol = 1e-6 * np.abs(dw).max()
                    np.testing.assert_allclose(mine, dw, atol=tol, err_msg=f"{sub} {name}")
                    seen += 1
            self.assertEqual(seen, len(ours.modules), sub)


if __name__ == "__main__":
    unittest.main(verbosity=2)
