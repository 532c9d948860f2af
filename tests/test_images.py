import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cache.inspect import verify
from cache.schema import Status
from cache.store import StoreError, open_store
from extract.cli import app as extract_app
from extract.finetune import FinetuneConfig, finetune
from extract.images import ImageEncoder, load_encoder, run_images
from extract.imaging import ImageError, decode
from extract.sample import make_sample
from tests.conftest import build_store

QUIET = dict(log=lambda *a, **k: None, quiet=True)


def _planted(sample):
    with open(os.path.join(sample, "labels", "planted_images.csv")) as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------ decoding

def test_every_planted_image_decodes_or_says_why(sample):
    planted = _planted(sample)
    assert {r["kind"] for r in planted} >= {"cmyk_jpeg", "grayscale_jpeg", "palette_alpha_png", "rgba_png",
                                           "tiny_1x1", "strip_4000x60", "truncated_jpeg", "empty_file",
                                           "decompression_bomb"}
    for r in planted:
        path = os.path.join(sample, r["image"])
        for exact in (False, True):
            if r["expected"] == "ok":
                a = decode(path, exact=exact)
                assert a.shape == (299, 299, 3) and a.dtype == np.uint8 and a.std() > 0 or r["kind"] == "tiny_1x1"
            else:
                with pytest.raises(ImageError) as e:
                    decode(path, exact=exact)
                assert e.value.status == Status.UNREADABLE and e.value.reason
    with pytest.raises(ImageError) as e:
        decode(os.path.join(sample, "image", "nobody-1.jpg"))
    assert e.value.status == Status.NO_INPUT and "missing" in e.value.reason


def test_png_behind_jpg_name_and_alpha_composited_on_white(tmp_path):
    p = str(tmp_path / "x.jpg")
    Image.new("RGBA", (400, 300), (255, 0, 0, 0)).save(p, format="PNG")     # fully transparent red
    a = decode(p)
    assert (a == 255).all(), "transparent pixels become white, not red or black"


def test_fast_decoding_is_close_to_torchvision_preset(tmp_path):
    """Draft mode + torch's resampling against torchvision's own Resize(342)+CenterCrop(299) (PIL's kernel)
    on the full image."""
    from torchvision.models import Inception_V3_Weights
    from torchvision.transforms import functional as F
    rng = np.random.default_rng(0)
    from extract.sample import _pattern
    preset = Inception_V3_Weights.IMAGENET1K_V1.transforms()
    # large photos (draft mode, the crop's box resampled) and the release's own 320-400 px sizes (resized
    # whole then cut, as torchvision does), square, portrait, landscape, enlarged and shrunk
    for (h, w) in [(1080, 1080), (1350, 1080), (720, 1280), (400, 300), (360, 360), (320, 320), (400, 320), (330, 500)]:
        p = str(tmp_path / f"{h}x{w}.jpg")
        Image.fromarray(_pattern(3, rng, h, w)).save(p, quality=90)
        img = Image.open(p).convert("RGB")
        ref = np.asarray(F.center_crop(F.resize(img, preset.resize_size, preset.interpolation, antialias=True),
                                       preset.crop_size)).astype(np.float32)
        fast = decode(p).astype(np.float32)
        exact = decode(p, exact=True).astype(np.float32)
        np.testing.assert_array_equal(exact, ref)
        psnr = 10 * np.log10(255.0 ** 2 / np.mean((fast - ref) ** 2))
        print(f"{h}x{w}: fast decoding PSNR {psnr:.1f} dB against torchvision's preset")
        assert psnr >= 36.0, (h, w, psnr)    # noisy patterns: JPEG DCT scaling differs in the noise only
        if min(h, w) < 2 * preset.resize_size[0]:     # decoded in full: only the resampling kernels differ
            assert psnr >= 50.0, (h, w, psnr)


def test_channels_last_resampling_is_torchs_interpolate_pixel_for_pixel(monkeypatch):
    """extract.imaging._torch_resize has torch's kernel write a channels-last output (through the ATen
    op's out= form, 1.5x faster decoding of release-sized images): the very pixels of the public
    `interpolate` then the crop, shrinking and enlarging, whole or cut; and the same through its
    fallback to `interpolate` where the op is missing."""
    from extract.imaging import _torch_resize
    rng = np.random.default_rng(3)
    cases = [((360, 360), (342, 342, 21, 21, 299)), ((400, 300), (456, 342, 78, 21, 299)),
             ((540, 700), (299, 299, 0, 0, None)), ((33, 45), (10, 12, 0, 0, None)), ((20, 30), (64, 96, 5, 7, 50))]
    for fallback in (False, True):
        if fallback:
            monkeypatch.setattr(torch.ops.aten, "_upsample_bilinear2d_aa", None, raising=False)
        for (h, w), (H, W, top, left, crop) in cases:
            a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            ref = torch.nn.functional.interpolate(torch.from_numpy(a.copy()).permute(2, 0, 1)[None], size=(H, W),
                                                  mode="bilinear", antialias=True,
                                                  align_corners=False)[0].permute(1, 2, 0).numpy()
            ch, cw = (H, W) if crop is None else (crop, crop)
            got = _torch_resize(a, H, W, top, left, crop)
            np.testing.assert_array_equal(got, ref[top:top + ch, left:left + cw])
            assert got.flags["C_CONTIGUOUS"] and got.dtype == np.uint8


# ------------------------------------------------------------------ encoder and fine-tuning

def _pretend_imagenet_file(path):
    """A torchvision-format Inception-v3 state dict (AuxLogits and fc included, as torchvision's file is),
    random weights with batch-norm statistics from noise: stands in for the ImageNet download."""
    from torchvision.models import inception_v3
    torch.manual_seed(1)
    m = inception_v3(weights=None, aux_logits=True, init_weights=True)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.momentum = None
    m.train()
    aux, m.AuxLogits = m.AuxLogits, None   # the auxiliary head needs 299-px inputs; it stays as initialised
    with torch.no_grad():
        for _ in range(2):
            m(torch.randn(4, 3, 107, 107))
    m.AuxLogits = aux
    torch.save(m.state_dict(), path)
    return m.state_dict()


@pytest.mark.slow
@pytest.mark.parametrize("blocks", [2, 0])
def test_finetuning_changes_only_trainable_blocks_and_new_layers(store_path, tmp_path, blocks):
    src = _pretend_imagenet_file(str(tmp_path / "inception_v3_google.pth"))
    out = str(tmp_path / "enc.pt")
    finetune(store_path, out, FinetuneConfig(weights=str(tmp_path / "inception_v3_google.pth"), epochs=1,
                                             trainable_blocks=blocks, image_size=107, batch_size=16, workers=0),
             **QUIET)
    ef = load_encoder(out)
    got = ef.encoder.state_dict()
    trained = {"Mixed_7b", "Mixed_7c"} if blocks == 2 else set()
    changed, same = set(), set()
    for k, v in src.items():
        if k.startswith(("AuxLogits.", "fc.")):
            assert f"backbone.{k}" not in got
            continue
        block = k.split(".")[0]
        (same if torch.equal(got[f"backbone.{k}"], v) else changed).add(block)
    assert changed == trained, (changed, trained)
    assert ef.meta["model"]["trainable"] == sorted(trained, key=["Mixed_7b", "Mixed_7c"].index)
    assert ef.meta["weights_source"].startswith("file") and ef.meta["model"]["transform_input"] is True


@pytest.mark.slow
def test_finetuning_learns_the_post_categories(encoder_file):
    _, m = encoder_file
    assert m["val_posts"] > 20
    # ten categories; the most common one is about 18 % of the val posts
    assert m["val_accuracy"] >= max(0.35, 2 * m["val_majority_baseline"]), m


@pytest.mark.slow
def test_encoder_file_is_self_describing(encoder_file):
    ef = load_encoder(encoder_file[0])
    assert ef.meta["categories"][:2] == ["beauty", "family"] and len(ef.meta["categories"]) == 10
    assert ef.preprocessing["crop"] == 107 and ef.meta["metrics"]["best_epoch"] >= 1
    assert ef.meta["history"] and len(ef.meta["weights_sha256"]) == 20
    x = torch.zeros(2, 3, 107, 107)
    with torch.no_grad():
        f = ef.encoder.features(x)
    assert f.shape == (2, 1024) and (f >= 0).all()


def test_imagenet_without_network_fails_at_once_saying_what_to_pass(store_path, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    start = time.time()
    r = CliRunner().invoke(extract_app, ["finetune-images", store_path, "--out", str(tmp_path / "e.pt"),
                                         "--epochs", "1", "--workers", "0"])
    if r.exit_code == 0:
        pytest.skip("this machine can download torchvision's weights")
    assert r.exit_code == 2 and "--weights PATH" in r.output and "--weights random" in r.output, r.output
    assert time.time() - start < 120


def test_trainable_blocks_out_of_range():
    with pytest.raises(ValueError, match="between 0 and 11"):
        ImageEncoder(10, trainable_blocks=12)


# ------------------------------------------------------------------ extraction

def test_every_bad_image_gets_its_status_and_is_listed(sample, extracted):
    path, output = extracted
    s = open_store(path)
    ids = [str(x) for x in s["posts/id"][:]]
    status = s["features/image_status"][:]
    feats = s["features/image"][:].astype(np.float32)
    for r in _planted(sample):
        row = ids.index(r["post_id"])
        want = Status.OK if r["expected"] == "ok" else Status.UNREADABLE
        assert status[row] == want, (r["kind"], status[row])
        if want == Status.UNREADABLE:
            assert (feats[row] == 0).all()
            assert f"post {r['post_id']} ({r['image']})" in output, r["kind"]
        else:
            assert np.abs(feats[row]).sum() > 0, r["kind"]
    no_image = np.array([not str(x) for x in s["posts/image"][:]])
    assert no_image.any() and (status[no_image] == Status.NO_INPUT).all()
    assert (feats[status != Status.OK] == 0).all() and np.isfinite(feats).all()
    assert verify(s) == []
    assert "unreadable 4" in output
    from cache.cli import app as cache_app
    info = CliRunner().invoke(cache_app, ["info", path])
    assert info.exit_code == 0 and "unreadable 4" in info.output
    for r in _planted(sample):
        assert (f"unreadable: post {r['post_id']}" in info.output) == (r["expected"] == "unreadable"), info.output


@pytest.mark.slow
def test_stored_features_equal_the_encoder_applied_directly(tmp_path):
    """torchvision's preset (Resize 342, CenterCrop 299, fp32) and torchvision's own Inception forward,
    against the store: cosine >= 0.99 per row in the default mode, float16 rounding in --exact."""
    from torchvision.models import Inception_V3_Weights
    data = str(tmp_path / "big")
    make_sample(data, influencers=8, posts=5, seed=5, image_size=720, clean=True)
    path = build_store(data, str(tmp_path / "s.zarr"), block=32)
    enc = str(tmp_path / "enc.pt")
    finetune(path, enc, FinetuneConfig(weights="random", epochs=1, batch_size=8, workers=0), **QUIET)
    ef = load_encoder(enc)
    s = open_store(path)
    preset = Inception_V3_Weights.IMAGENET1K_V1.transforms()
    model = ef.encoder.eval()
    with torch.no_grad():
        ref = np.stack([
            torch.relu(model.proj(model.backbone(preset(Image.open(os.path.join(data, str(p))).convert("RGB"))[None])))
            [0].numpy() for p in s["posts/image"][:]])
    run_images(path, "0/1", encoder_path=enc, workers=0, batch_size=8, quiet=True)
    fast = s["features/image"][:].astype(np.float32)
    cos = (fast * ref).sum(1) / np.linalg.norm(fast, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.99, cos.min()
    print(f"default mode: cosine min {cos.min():.5f}, median {np.median(cos):.5f} over {len(cos)} rows")
    # The check has teeth: another post's features are much further away than the same post's.
    shuffled = np.roll(ref, 1, axis=0)
    cos_other = (fast * shuffled).sum(1) / np.linalg.norm(fast, axis=1) / np.linalg.norm(shuffled, axis=1)
    assert np.median(cos_other) < cos.min() - 0.005, (np.median(cos_other), cos.min())
    print(f"another post's features: median cosine {np.median(cos_other):.5f}")

    path2 = build_store(data, str(tmp_path / "exact.zarr"), block=32)
    run_images(path2, "0/1", encoder_path=enc, workers=0, batch_size=8, exact=True, quiet=True)
    exact = open_store(path2)["features/image"][:].astype(np.float32)
    np.testing.assert_allclose(exact, ref.astype(np.float16).astype(np.float32), rtol=2e-3,
                               atol=2e-3 * float(np.abs(ref).max()))
    assert open_store(path2)["features/image"].attrs["encoder"]["decode"] == "exact"


def test_file_missing_at_extraction_time_is_status_2(sample, quick_encoder, tmp_path):
    import shutil
    data = str(tmp_path / "data")
    shutil.copytree(sample, data)
    path = build_store(data, str(tmp_path / "s.zarr"))
    s = open_store(path)
    images = [str(x) for x in s["posts/image"][:]]
    gone = next(i for i, p in enumerate(images) if p)
    os.remove(os.path.join(data, images[gone]))
    run_images(path, "0/1", encoder_path=quick_encoder[0], workers=0, batch_size=16, quiet=True)
    assert s["features/image_status"][gone] == Status.NO_INPUT
    assert verify(s) == []


def test_other_encoder_is_refused(extracted, quick_encoder):
    # the other precision than the one `auto` chose on this machine (bf16 where the CPU has it, else fp32)
    stored = open_store(extracted[0])["features/image"].attrs["encoder"]["precision"]
    other = "bf16" if stored == "fp32" else "fp32"
    with pytest.raises(StoreError, match="another encoder.*precision"):
        run_images(extracted[0], "0/1", encoder_path=quick_encoder[0], precision=other, quiet=True)


def test_cli_errors_are_one_line(store_path, tmp_path):
    r = CliRunner().invoke(extract_app, ["images", store_path, "--shard", "0/1", "--encoder", str(tmp_path / "no.pt")])
    assert r.exit_code == 2 and "no such encoder file" in r.output
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not torch")
    r = CliRunner().invoke(extract_app, ["images", store_path, "--shard", "0/1", "--encoder", str(bad)])
    assert r.exit_code == 2 and "not a readable encoder file" in r.output


def test_nvjpeg_decoder_path_agrees_with_pil(sample, quick_encoder, extracted, tmp_path):
    """--decoder nvjpeg: torchvision.io.decode_jpeg on the model's device (here the CPU, libjpeg-turbo;
    nvJPEG on a GPU), non-JPEG and CMYK files still through PIL. Same statuses, near-identical features."""
    path = build_store(sample, str(tmp_path / "s.zarr"))
    run_images(path, "0/1", encoder_path=quick_encoder[0], workers=0, batch_size=16, decoder="nvjpeg", quiet=True)
    s, ref = open_store(path), open_store(extracted[0])
    np.testing.assert_array_equal(s["features/image_status"][:], ref["features/image_status"][:])
    ok = s["features/image_status"][:] == Status.OK
    a = s["features/image"][:].astype(np.float32)[ok]
    b = ref["features/image"][:].astype(np.float32)[ok]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() >= 0.98, cos.min()
    assert verify(s) == []


@pytest.mark.slow
def test_finetuning_killed_mid_run_resumes_after_its_last_epoch(store_path, tmp_path):
    """SIGKILL after the first epoch's checkpoint; the same command resumes and ends with the very
    weights an uninterrupted run gets (per-epoch seeding, optimizer state in the checkpoint)."""
    out = str(tmp_path / "enc.pt")
    cmd = [sys.executable, "-m", "extract.cli_main", "finetune-images", store_path, "--out", out,
           "--weights", "random", "--epochs", "5", "--image-size", "107", "--batch-size", "16", "--workers", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not os.path.exists(out + ".ckpt") and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert os.path.exists(out + ".ckpt") and not os.path.exists(out), "killed after a checkpoint, before the end"
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "resuming from" in r.stderr and not os.path.exists(out + ".ckpt")
    resumed = load_encoder(out).meta
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3, 4, 5]
    whole = str(tmp_path / "whole.pt")
    r = subprocess.run(cmd[:cmd.index("--out") + 1] + [whole] + cmd[cmd.index("--out") + 2:],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert resumed["weights_sha256"] == load_encoder(whole).meta["weights_sha256"]
    assert resumed["history"][1:] == [dict(h, seconds=r_["seconds"]) for h, r_ in
                                      zip(load_encoder(whole).meta["history"][1:], resumed["history"][1:])]


@pytest.mark.slow
def test_plan_launchers_run_the_shards(sample, quick_encoder, tmp_path):
    """`extract plan` writes a SLURM array script and a Kubernetes Indexed Job; running shard 0 through
    the SLURM script and shard 1 through the Job's command fills the store as one job does."""
    import yaml
    path = build_store(sample, str(tmp_path / "s.zarr"))
    out = tmp_path / "launch"
    r = CliRunner().invoke(extract_app, ["plan", path, "--shards", "2", "--out", str(out), "--stages", "images",
                                         "--encoder", quick_encoder[0], "--cpus", "1"])
    assert r.exit_code == 0, r.output
    assert "--shard 1/2" in r.output and "blocks pending over 2 shards" in r.output
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    slurm = subprocess.run(["bash", str(out / "slurm_images.sh")], cwd=tmp_path, capture_output=True, text=True,
                           env=dict(env, SLURM_ARRAY_TASK_ID="0", SLURM_CPUS_PER_TASK="1"))
    assert slurm.returncode == 0, slurm.stderr
    job = yaml.safe_load((out / "k8s_images.yaml").read_text())
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 2
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    k8s = subprocess.run(container["command"] + container["args"], capture_output=True, text=True,
                         env=dict(env, JOB_COMPLETION_INDEX="1"))
    assert k8s.returncode == 0, k8s.stderr
    s = open_store(path)
    assert verify(s) == [] and s["features/image_done"][:].all()
    # one job with the same settings as the launchers' (the default batch size: fp32 convolutions
    # round differently at other batch sizes, 8 of 531,456 float16 values one step apart at 16 vs 32)
    one = build_store(sample, str(tmp_path / "one.zarr"))
    r = CliRunner().invoke(extract_app, ["images", one, "--shard", "0/1", "--encoder", quick_encoder[0],
                                         "--workers", "1"])
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(s["features/image"][:], open_store(one)["features/image"][:])


@pytest.mark.parametrize("error", [(28, "No space left on device"), (13, "Permission denied")])
def test_disk_full_or_permission_error_mid_block(sample, quick_encoder, extracted, tmp_path, monkeypatch, error):
    """The storage fails after a block's features went out and before its statuses did: the job stops
    with one clear line, the store still verifies (the block is not flagged done), a rerun completes."""
    from zarr.storage import LocalStore
    path = build_store(sample, str(tmp_path / "s.zarr"), block=64)
    real_set = LocalStore.set

    async def failing_set(self, key, value, *a, **k):
        if key.startswith("features/image_status/c/") and key != "features/image_status/c/0":
            raise OSError(error[0], error[1])
        return await real_set(self, key, value, *a, **k)

    monkeypatch.setattr(LocalStore, "set", failing_set)
    r = CliRunner().invoke(extract_app, ["images", path, "--shard", "0/1", "--encoder", quick_encoder[0],
                                         "--workers", "0", "--batch-size", "16"])
    assert r.exit_code == 2 and error[1] in r.output.strip().splitlines()[-1], r.output
    assert r.output.strip().splitlines()[-1].startswith("error:")
    monkeypatch.setattr(LocalStore, "set", real_set)
    s = open_store(path)
    done = s["features/image_done"][:]
    assert done[0] and not done[1:].any()
    assert verify(s) == []
    run_images(path, "0/1", encoder_path=quick_encoder[0], workers=0, batch_size=16, quiet=True)
    s = open_store(path)
    assert verify(s) == [] and s["features/image_done"][:].all()
    np.testing.assert_array_equal(s["features/image"][:], open_store(extracted[0])["features/image"][:])


def test_block_finished_elsewhere_after_planning_does_not_shift_batches(sample, quick_encoder, extracted, tmp_path,
                                                                         monkeypatch):
    """The decoding batches are laid out from the one read of the done flags that the job loop follows
    (run_shard reads them once and hands them to the job's plan). Here that read leaves out block 0,
    as if another job had just finished it: block 0 is neither decoded nor written, and every other
    block gets its own images (a plan differing from the loop would give block 1 block 0's images)."""
    import extract.jobs
    path = build_store(sample, str(tmp_path / "s.zarr"))
    real = extract.jobs.pending_blocks
    monkeypatch.setattr(extract.jobs, "pending_blocks", lambda *a, **k: real(*a, **k)[1:])
    run_images(path, "0/1", encoder_path=quick_encoder[0], workers=0, batch_size=16, quiet=True)
    s, ref = open_store(path), open_store(extracted[0])
    done = s["features/image_done"][:]
    assert not done[0] and done[1:].all()
    later = slice(s.block_rows(1).start, s.n_posts)
    np.testing.assert_array_equal(s["features/image"][later], ref["features/image"][later])
    monkeypatch.undo()
    run_images(path, "0/1", encoder_path=quick_encoder[0], workers=0, batch_size=16, quiet=True)
    assert verify(s) == [] and s["features/image_done"][:].all()
    np.testing.assert_array_equal(s["features/image"][:], ref["features/image"][:])


def test_device_decode_resizes_each_size_in_one_call_like_one_by_one(tmp_path):
    """--decoder nvjpeg's device path: images grouped by size and resized together give exactly what
    resizing each alone gives; a file the decoder refuses is named as failed, the others kept."""
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg
    from extract.nvjpeg import gpu_decode, resize_crop
    rng = np.random.default_rng(0)
    raw = {}
    for i, (w, h) in enumerate([(360, 300), (200, 410), (360, 300), (200, 410), (512, 512)]):
        p = tmp_path / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(p, quality=85)
        raw[i] = p.read_bytes()
    raw[7] = b"\xff\xd8 not a jpeg \xff\xd9"
    rows, pixels, failed = gpu_decode(raw, torch.device("cpu"), 342, 299)
    assert sorted(rows) == [0, 1, 2, 3, 4] and failed == [7] and pixels.shape == (5, 299, 299, 3)
    for k, row in enumerate(rows):
        one = decode_jpeg(torch.frombuffer(bytearray(raw[row]), dtype=torch.uint8), mode=ImageReadMode.RGB)
        torch.testing.assert_close(pixels[k], resize_crop(one[None], 342, 299)[0], rtol=0, atol=0)


def test_compiled_job_pads_short_batches_without_changing_features(sample, quick_encoder, extracted, tmp_path,
                                                                    monkeypatch):
    """--compile pads every batch to the batch size (a short one would be a new shape to compile).
    With compilation itself replaced by the plain model, the padded job's features equal the
    reference job's: padding rows change no real row."""
    import extract.images as images
    monkeypatch.setattr(images, "maybe_compile", lambda fn, enabled: fn)
    seen = []
    path = build_store(sample, str(tmp_path / "s.zarr"))
    job_init = images.ImageJob.__init__

    def spy(self, *a, **kw):
        job_init(self, *a, **kw)
        features = self.features
        self.features = lambda x: (seen.append(len(x)), features(x))[1]
    monkeypatch.setattr(images.ImageJob, "__init__", spy)
    run_images(path, "0/1", encoder_path=quick_encoder[0], workers=0, batch_size=7, compile=True, quiet=True)
    assert set(seen) == {7}                                 # every call the same shape
    s, ref = open_store(path), open_store(extracted[0])
    np.testing.assert_array_equal(s["features/image_status"][:], ref["features/image_status"][:])
    ok = s["features/image_status"][:] == Status.OK
    np.testing.assert_allclose(s["features/image"][:][ok].astype(np.float32),
                               ref["features/image"][:][ok].astype(np.float32), rtol=2e-3, atol=2e-3)


def test_shared_memory_too_small_for_the_decoding_workers(sample, quick_encoder, extracted, tmp_path, monkeypatch):
    """The decoding workers hand their batches over in /dev/shm, 64 MB in a default container: less than
    one GPU batch. With room for no batch per worker the job stops at once with one line saying what to
    raise, before any block is written; with room for fewer batches than it prefetches it says so and
    prefetches less, storing the same features; `extract plan`'s Kubernetes Job mounts a larger one."""
    import yaml

    import extract.images as images
    mb = 1 << 20
    assert images.prefetch_for(16, 69 * mb, None) == images.prefetch_for(0, 69 * mb, 1) == images.PREFETCH
    assert images.prefetch_for(16, 69 * mb, 2048 * mb) == 1 and images.prefetch_for(16, 69 * mb, 8192 * mb) == 4
    with pytest.raises(Exception, match=r"/dev/shm has 64 MB free; 16 decoding workers need 1,242 MB"):
        images.prefetch_for(16, 69 * mb, 64 * mb)
    assert images.shared_memory_free(str(tmp_path)) > 0 and images.shared_memory_free(str(tmp_path / "no")) is None

    path = build_store(sample, str(tmp_path / "s.zarr"))
    args = ["images", path, "--shard", "0/1", "--encoder", quick_encoder[0], "--workers", "2", "--batch-size", "16"]
    crop = load_encoder(quick_encoder[0]).preprocessing["crop"]
    batch = 16 * crop * crop * 3
    monkeypatch.setattr(images, "shared_memory_free", lambda path=images.SHM: batch)
    r = CliRunner().invoke(extract_app, args)
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert r.output.startswith("error: shared memory /dev/shm has ") and "2 decoding workers need" in r.output
    assert not open_store(path)["features/image_done"][:].any()

    monkeypatch.setattr(images, "shared_memory_free", lambda path=images.SHM: (2 * 2 + 2) * batch)
    r = CliRunner().invoke(extract_app, args)
    assert r.exit_code == 0, r.output
    assert "room for 2 batch(es) per decoding worker, not 4" in r.output
    s = open_store(path)
    np.testing.assert_array_equal(s["features/image"][:], open_store(extracted[0])["features/image"][:])

    from extract.finetune import _loader              # fine-tuning's workers: the same check
    ds = type("Images", (torch.utils.data.Dataset,), {"crop": crop, "__len__": lambda self: 1})()
    monkeypatch.setattr(images, "shared_memory_free", lambda path=images.SHM: batch)
    with pytest.raises(Exception, match="decoding workers need"):
        _loader(ds, 16, True, 2, 0, torch.device("cpu"))
    assert _loader(ds, 16, True, 0, 0, torch.device("cpu")).prefetch_factor is None

    from extract.plan import PlanSettings, k8s_manifest
    pod = yaml.safe_load(k8s_manifest("images", path, PlanSettings(shards=2)))["spec"]["template"]["spec"]
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "shm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]


def test_worker_pools_are_sized_to_the_cpus_the_job_may_use(tmp_path):
    """Default --workers come from the process's CPU affinity capped by a cgroup CPU quota (a pod's CPU
    limit), not from the host's core count; cgroup v2 and v1 files, no quota, no cgroup at all."""
    from runtime.cpus import usable_cpus
    mine = len(os.sched_getaffinity(0))
    v2 = tmp_path / "v2"
    v2.mkdir()
    for text, want in [("max 100000", mine), ("100000 100000", 1), ("50000 100000", 1),
                       (f"{(mine + 7) * 100000} 100000", mine)]:
        (v2 / "cpu.max").write_text(text + "\n")
        assert usable_cpus(str(v2)) == want, text
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert usable_cpus(str(v2)) == min(mine, 2)
    v1 = tmp_path / "v1" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert usable_cpus(str(v1.parent)) == mine
    (v1 / "cpu.cfs_quota_us").write_text("100000\n")
    assert usable_cpus(str(v1.parent)) == 1
    assert usable_cpus(str(tmp_path / "none")) == mine


@pytest.mark.slow
def test_out_of_device_memory_halves_the_batch_and_keeps_done_blocks(sample, quick_encoder, extracted, tmp_path,
                                                                      monkeypatch, capsys):
    """A GPU smaller than the batch size assumes (or shared): the model raises torch's out-of-memory error
    above 4 images at once. The job halves its model batches (16 → 8 → 4), says so with the option to
    pass, and stores what the reference job stores. Out of memory even for one image: one line naming
    the device, and the blocks committed before are kept."""
    import extract.images as images
    from runtime.device import OUT_OF_MEMORY
    calls = {"blocks": 0, "fail_from_block": None}
    job_init = images.ImageJob.__init__

    def small_device(self, *a, **kw):
        job_init(self, *a, **kw)
        features, encode = self.features, self.encode

        def limited(x):
            if len(x) > 4 or calls["fail_from_block"] is not None and calls["blocks"] >= calls["fail_from_block"]:
                raise OUT_OF_MEMORY("CUDA out of memory. Tried to allocate 2.00 GiB")
            return features(x)

        def counted(rows):
            calls["blocks"] += 1
            return encode(rows)
        self.features, self.encode = limited, counted
    monkeypatch.setattr(images.ImageJob, "__init__", small_device)
    path = build_store(sample, str(tmp_path / "s.zarr"))
    run_images(path, "0/1", encoder_path=quick_encoder[0], workers=0, batch_size=16, quiet=True)
    err = capsys.readouterr().err
    assert "out of cpu memory with batches of 16 images; going on with 8 (pass --batch-size 8" in err
    assert "going on with 4" in err and "going on with 2" not in err
    s, ref = open_store(path), open_store(extracted[0])
    np.testing.assert_array_equal(s["features/image_status"][:], ref["features/image_status"][:])
    ok = s["features/image_status"][:] == Status.OK
    np.testing.assert_allclose(s["features/image"][:][ok].astype(np.float32),
                               ref["features/image"][:][ok].astype(np.float32), rtol=2e-3, atol=2e-3)
    # no memory even for one image, from the second block on: one line; the first block stays done
    path = build_store(sample, str(tmp_path / "t.zarr"))
    calls.update(blocks=0, fail_from_block=2)
    r = CliRunner().invoke(extract_app, ["images", path, "--shard", "0/1", "--encoder", quick_encoder[0],
                                         "--workers", "0", "--batch-size", "4"])
    assert r.exit_code == 2, r.output
    lines = [x for x in r.output.strip().splitlines() if x.startswith("error")]
    assert len(lines) == 1 and "out of cpu memory with batches of 1 image," in lines[0], r.output
    assert "Traceback" not in r.output
    done = open_store(path)["features/image_done"][:]
    assert done[0] and not done[1:].any()


def test_nvjpeg_refusals_are_decoded_by_pil_and_a_broken_decoder_is_one_line(sample, quick_encoder, extracted,
                                                                              tmp_path, monkeypatch, capsys):
    """--decoder nvjpeg: an image the device decoder refuses (a JPEG variant nvJPEG lacks) used to be
    stored as unreadable with zero features; it is decoded with PIL on the host instead (said once,
    naming the post), so the statuses are PIL's and the features agree. A decoder that refuses
    everything (a torchvision without nvJPEG) stops the job before any block with one line."""
    import torchvision.io
    real = torchvision.io.decode_jpeg
    refused = []

    def picky(data, *a, **kw):
        if isinstance(data, list) and len(data) > 1:
            raise RuntimeError("batched decode failed")       # so that each image is tried alone
        one = data[0] if isinstance(data, list) else data
        if int(one.sum()) % 3 == 0:
            refused.append(1)
            raise RuntimeError("nvjpegDecode: unsupported JPEG")
        return real(data, *a, **kw)
    monkeypatch.setattr(torchvision.io, "decode_jpeg", picky)
    path = build_store(sample, str(tmp_path / "s.zarr"))
    run_images(path, "0/1", encoder_path=quick_encoder[0], workers=0, batch_size=16, decoder="nvjpeg", quiet=True)
    assert len(refused) > 3
    err = capsys.readouterr().err
    assert len([x for x in err.splitlines() if "nvJPEG refused post" in x]) == 1, err
    s, ref = open_store(path), open_store(extracted[0])
    np.testing.assert_array_equal(s["features/image_status"][:], ref["features/image_status"][:])
    ok = s["features/image_status"][:] == Status.OK
    a, b = s["features/image"][:].astype(np.float32)[ok], ref["features/image"][:].astype(np.float32)[ok]
    assert ((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min() >= 0.98
    monkeypatch.setattr(torchvision.io, "decode_jpeg", lambda *a, **kw: (_ for _ in ()).throw(
        RuntimeError("decode_jpeg on cuda: torchvision was not compiled with nvJPEG support")))
    path = build_store(sample, str(tmp_path / "t.zarr"))
    r = CliRunner().invoke(extract_app, ["images", path, "--shard", "0/1", "--encoder", quick_encoder[0],
                                         "--workers", "0", "--decoder", "nvjpeg"])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    lines = [x for x in r.output.splitlines() if x.startswith("error")]
    assert len(lines) == 1 and "--decoder nvjpeg: torchvision cannot decode JPEGs on cpu here" in lines[0], r.output
    assert "leave --decoder out" in lines[0]
    assert not open_store(path)["features/image_done"][:].any()


def test_finetuning_out_of_device_memory_is_one_line(store_path, tmp_path, monkeypatch):
    """Training out of device memory is one line saying to pass a smaller --batch-size (not halved
    by itself: the batch size is part of the training recipe, and the checkpoint records it)."""
    import extract.finetune as ft
    from runtime.device import OUT_OF_MEMORY

    def no_memory(*a, **kw):
        raise OUT_OF_MEMORY("CUDA out of memory. Tried to allocate 1.00 GiB")
    monkeypatch.setattr(ft, "_train_epoch", no_memory)
    r = CliRunner().invoke(extract_app, ["finetune-images", store_path, "--out", str(tmp_path / "e.pt"),
                                         "--weights", "random", "--epochs", "1", "--image-size", "75",
                                         "--batch-size", "8", "--workers", "0"])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    lines = [x for x in r.output.splitlines() if x.startswith("error")]
    assert lines == ["error: out of cpu memory training at --batch-size 8 (epoch 1): pass a smaller --batch-size"], r.output


def test_fp32_on_a_gpu_is_not_tf32_and_the_settings_come_back():
    """`--precision fp32` on CUDA runs its convolutions and matmuls without TF32 (torch lets cuDNN use
    TF32 by default, a 10-bit mantissa), so the fp32 job is the reference it says it is; a user's own
    TF32 settings are untouched outside the job's model calls. (The flags need no GPU to be set.)"""
    import torch

    from runtime.device import autocast
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, True
        with autocast(torch.device("cuda"), "fp32"):
            assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (False, False)
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, True)
        with autocast(torch.device("cpu"), "fp32"):        # the CPU has no TF32: nothing to change
            assert torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_auto_precision_keeps_image_features_in_fp32_on_every_cpu(monkeypatch):
    """On a CPU with native bf16 the image job's bf16 features were too far from fp32's (min cosine 0.982,
    20 of 44 rows under 0.99), the text job's were not (0.99992): `auto` is fp32 for images on every CPU."""
    import runtime.device as rd
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    for has in (True, False):
        monkeypatch.setattr(rd, "cpu_has_bf16", lambda: has)
        assert rd.pick_precision("auto", cpu) == "fp32"
        assert rd.pick_precision("auto", cpu, bf16_on_cpu=True) == ("bf16" if has else "fp32")
        assert rd.pick_precision("auto", gpu) == "bf16" and rd.pick_precision("bf16", cpu) == "bf16"
