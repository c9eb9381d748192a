"""`make gpu-check` runs its whole course on the CPU with toy architectures: every section, no error."""

import json
import signal
import time

from backend.tools import gpu_check, gpu_profile, sections


def test_gpu_check_runs_every_section_with_tiny_architectures(tmp_path, capsys):
    assert gpu_check.main(["--tiny", "--out", str(tmp_path), "--budget-s", "900"]) == 0
    [written] = tmp_path.glob("gpu-check-*-cpu.json")
    out = json.loads(written.read_text())
    assert out["errors"] == {} and out["skipped"] == [] and out["cut"] == [] and out["complete"] is True
    assert out["sd15"]["unet"] and out["sd15"]["pipeline"] and out["sd15"]["system_4img"]["last_s"] > 0
    assert [r["batch"] for r in out["sd15_memory"]] == [1, 2]
    assert out["place"]["place_s"] > 0 and out["sdxl"][0]["images_per_s"] > 0
    assert out["sdxl_system_4img"]["last_s"] > 0
    assert out["guard_oom"]["made"] == 8 and out["guard_nan_decode"]["recovered"]
    assert out["guard_nan_decode"]["overflowed_first"] in (True, False)
    compiled = out["sd15_compiled"]  # on the CPU it runs uncompiled: the jobs, LoRA on and off, all made
    assert compiled["compiled"] is False and [j["job"] for j in compiled["jobs"]] == [
        "batch 1", "batch 1 again", "batch 2", "with a LoRA", "with the LoRA again", "without it"]
    for name in ("sd15_training", "sdxl_training"):  # UNet only, then with the text encoder(s)
        assert [r["text_encoders"] for r in out[name]] == [False, True], out[name]
        assert all(r["steps_per_s"] > 0 and all(x == x for x in r["loss"]) for r in out[name]), out[name]
    profile = out["sd15_profile"]  # batch 4 with CFG: 8 latents, profiled on the CPU with the toy UNet
    assert profile["latents"] == 8 and profile["step_ms"] > 0 and 0 < profile["busy_share"] <= 1, profile
    assert profile["launches_per_step"] > 0 and profile["top_ops"] and profile["top_kernels"] == []
    assert set(profile["categories"]) == {"attention", "convolution", "matmul", "norm", "elementwise/other"}
    assert all(0 <= v <= 1 for v in profile["categories"].values()) and sum(profile["categories"].values()) > 0.99
    assert profile["categories"]["convolution"] > 0 and profile["categories"]["attention"] > 0, profile["categories"]
    assert all(op["ms"] > 0 and 0 < op["share"] <= 1 and op["calls"] > 0 for op in profile["top_ops"])
    printed = capsys.readouterr().out
    assert "guard: out-of-memory batch made one at a time" in printed and "SDXL training steps/s" in printed
    assert "SD 1.5 step at batch 4: ms, GPU busy share" in printed and "COMPILE: graphs made" in printed


def test_a_broken_section_is_recorded_and_the_exit_code_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "save_sdxl", lambda *a: (_ for _ in ()).throw(RuntimeError("no SDXL today")))
    monkeypatch.setattr(gpu_check.bench_gpu, "gpu_part", lambda *a: {"errors": {}})
    assert gpu_check.main(["--tiny", "--out", str(tmp_path)]) == 1
    out = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert out["errors"] == {"sdxl build": "RuntimeError: no SDXL today"}


def test_a_section_that_hangs_is_cut_and_what_was_measured_is_already_on_disk(tmp_path):
    check = sections.Check(budget_s=60, path=tmp_path / "out.json")
    check.limit_s = lambda cost_s: 0.3  # a real limit is a minute or more
    check.result["quick"] = check.section("quick", lambda: 7)  # as run() stores each section's figures
    left_on_disk = []

    def swallows_exceptions():  # as bench's own sections do: the cut must get past them
        left_on_disk.append(json.loads((tmp_path / "out.json").read_text()))  # if the box were stopped now
        try:
            time.sleep(30)
        except Exception:
            pass
        return "went on"

    started = time.monotonic()
    assert check.section("hangs", swallows_exceptions) is None
    assert time.monotonic() - started < 5
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # no alarm left behind for the next section
    assert left_on_disk[0]["quick"] == 7, "the section before was not on disk while this one ran"
    on_disk = json.loads((tmp_path / "out.json").read_text())
    assert on_disk["quick"] == 7 and on_disk["cut"] == ["hangs"] and on_disk["errors"] == {}
    assert on_disk["complete"] is False
    assert check.section("next", lambda: "ran") == "ran"


def test_op_category_reads_aten_ops_and_cuda_kernel_names():
    expected = {
        "aten::_scaled_dot_product_flash_attention": "attention",
        "fmha_cutlassF_f16_aligned_64x64_rf_sm80": "attention",  # a cutlass kernel, but attention's
        "sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_nhwckrsc_nhwc": "convolution",  # cuDNN's, "gemm" in it
        "aten::cudnn_convolution": "convolution",
        "nvjet_hsh_128x256_64x4_2x1_v_bz_coopA_NTN": "matmul",
        "aten::addmm": "matmul",
        "aten::native_group_norm": "norm",
        "void at::native::(anonymous namespace)::RowwiseMomentsCUDAKernel<c10::Half>": "norm",
        "aten::silu": "elementwise/other",
        "Memcpy HtoD (Pageable -> Device)": "elementwise/other",
    }
    assert {name: gpu_profile.op_category(name) for name in expected} == expected
