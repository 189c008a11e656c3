"""Generated data that cannot be silently wrong: each test names a corruption path it closes."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import generate_with_mask as gen
from ldm.data.layouts import index_category
from ldm.generation import load_run
from ldm.models.diffusion.latent_mask import latent_mask, thin_latent_masks
from ldm.models.diffusion.sampler_registry import build_sampler
from ldm.models.diffusion.schedule import NoiseSchedule
from ldm.pairs import pair_seed, read_index
from ldm.segmentation.data import EvaluationSet
from ldm.segmentation.leakage import check_leakage
from tests.run_fixture import gen_args, make_dataset, make_run, record_timesteps
from utils.errors import UserError


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    work = tmp_path_factory.mktemp("trust")
    data = make_dataset(work / "texture-ad", defects=("scratch", "crack"))
    ckdir = make_run(work, data, names=("brick+scratch", "brick+crack"), steps=(5, 7))
    return work, data, ckdir


# --------------------------------------------------------------------------- 1. latent-mask threshold
def test_latent_mask_keeps_cells_at_exactly_half():
    # bilinear 256 -> 32 samples pixels 8i+3 and 8i+4 for cell i: an 8 px line on rows 4..11 puts
    # cells 0 and 1 at exactly 0.5. The official rule (>= 0.5) keeps both rows; "> 0.5" kept nothing.
    m = torch.zeros(1, 256, 256)
    m[:, 4:12, :] = 1
    lat = latent_mask(m, (32, 32))
    assert lat.shape == (1, 1, 32, 32)
    assert lat[0, 0, :2].eq(1).all() and lat[0, 0, 2:].eq(0).all()
    assert thin_latent_masks(m, (32, 32)) == 0


@pytest.mark.parametrize("width", [1, 2, 3, 5, 7])
def test_thin_lines_and_small_blobs_never_vanish(width):
    rng = np.random.default_rng(width)
    for _ in range(20):
        m = torch.zeros(1, 256, 256)
        r, c = (int(v) for v in rng.integers(0, 256 - 40, 2))
        if rng.random() < 0.5:
            m[:, r:r + width, c:c + 40] = 1          # a thin scratch
        else:
            m[:, r:r + width, c:c + width] = 1       # a small blob
        lat = latent_mask(m, (32, 32))
        assert lat.sum() >= 1, "a non-empty pixel mask became an empty latent mask"
        # the kept cell covers part of the pixel mask
        cover = torch.nn.functional.adaptive_avg_pool2d(m[:, None], (32, 32))
        assert float((cover * lat).sum()) > 0


def test_empty_pixel_mask_stays_empty():
    assert latent_mask(torch.zeros(2, 64, 64), (16, 16)).sum() == 0


def test_generation_counts_masks_with_thin_parts(world, tmp_path):
    work, data, ckdir = world
    masks = tmp_path / "thin"
    masks.mkdir()
    for i in range(3):  # 1 px scratches: bilinear 32 -> 8 samples rows 4k+1, 4k+2 only
        a = np.zeros((32, 32), np.uint8)
        a[4 * i + 3, 4:20] = 255
        Image.fromarray(a).save(masks / f"{i:03d}_mask.png")
    out = gen.main(gen_args(data, ckdir, tmp_path / "out", "--mask_path", str(masks), "--n_samples", "3"))
    assert out["thin_masks"] == 3
    rows = read_index(tmp_path / "out" / "brick" / "scratch")
    assert len(rows) == 3 and all(r["mask_area"] > 0 for r in rows)


# ------------------------------------------------------------------------ 2. mask split from the run
@pytest.mark.parametrize("split,expected", [("third", 2), ("all", 6)])
def test_masks_come_from_the_split_the_run_trained_with(tmp_path, split, expected):
    data = make_dataset(tmp_path / "data")
    ckdir = make_run(tmp_path, data, split=split)
    gen.main(gen_args(data, ckdir, tmp_path / "out"))
    prov = json.loads((tmp_path / "out" / "brick" / "scratch" / "provenance.json").read_text())
    assert prov["mask_split"] == split and len(prov["mask_files"]) == expected
    assert len(prov["training_anomalies"]) == expected
    # and the flag overrides it
    other = "all" if split == "third" else "third"
    gen.main(gen_args(data, ckdir, tmp_path / "out2", "--mask_split", other))
    prov = json.loads((tmp_path / "out2" / "brick" / "scratch" / "provenance.json").read_text())
    assert len(prov["mask_files"]) == (6 if other == "all" else 2)


# -------------------------------------------------------------------- 3. t_start for every sampler
@pytest.mark.parametrize("name,steps", [("aias", 6), ("ddim", 10), ("plms", 10), ("ddpm", None)])
def test_every_sampler_makes_its_first_call_at_t_start(name, steps):
    schedule = NoiseSchedule.from_config("linear", 1000, 0.00085, 0.012)
    sampler = build_sampler(name, schedule, steps=steps, t_start=437)
    calls = []

    def denoiser(x, t):
        calls.append(int(t[0]))
        return torch.zeros_like(x)

    from ldm.models.diffusion.samplers import MaskGuidance

    z_bg = torch.zeros(1, 4, 8, 8)
    guidance = MaskGuidance(torch.ones(1, 1, 8, 8), z_bg=z_bg, writeback="off")
    sampler.sample(denoiser, (1, 4, 8, 8), rng=[0], guidance=guidance)
    assert calls[0] == 437 and max(calls) == 437


def test_generate_with_ddim_and_t_start_starts_there(world, tmp_path, monkeypatch):
    work, data, ckdir = world
    opt = gen.options(gen_args(data, ckdir, tmp_path, "--sampler", "ddim", "--steps", "5", "--t_start", "300",
                               "--n_samples", "1"))
    run = load_run(opt, torch.device("cpu"))
    seen = []
    original = run.model.denoiser

    def spy(c, m):
        fn = original(c, m)
        return lambda x, t: (seen.append(int(t[0])), fn(x, t))[1]

    monkeypatch.setattr(run.model, "denoiser", spy)
    from ldm.generation import generate_pairs

    generate_pairs(opt, run=run, log=lambda *_: None)
    assert seen[0] == 300


# ------------------------------------------------------------------------ 4. embedding-name mismatch
def test_unknown_embedding_name_is_refused_with_the_names_it_holds(world, tmp_path):
    work, data, ckdir = world
    args = gen_args(data, ckdir, tmp_path, "--mask_path", str(data / "brick" / "ground_truth" / "scratch"))
    args[args.index("--anomaly_name") + 1] = "Scratch"
    with pytest.raises(UserError, match=r"holds no embedding 'brick\+Scratch'.*brick\+crack, brick\+scratch"):
        gen.main(args)
    assert not (tmp_path / "brick").exists()


def test_name_template_of_the_run_decides_the_embedding_name(tmp_path):
    data = make_dataset(tmp_path / "data")
    ckdir = make_run(tmp_path, data, names=("damaged",), name_template="damaged")
    out = gen.main(gen_args(data, ckdir, tmp_path / "out", "--n_samples", "1"))
    assert out["written"] == 1
    prov = json.loads((tmp_path / "out" / "brick" / "scratch" / "provenance.json").read_text())
    assert prov["embedding_name"] == "damaged"


# -------------------------------------------------------------------------------- 5. the manifest
def test_rerun_with_any_pixel_setting_changed_is_refused(world, tmp_path):
    work, data, ckdir = world
    out = tmp_path / "out"
    base = gen_args(data, ckdir, out, "--weight_idx", "5", "--n_samples", "2")
    assert gen.main(base)["written"] == 2
    assert gen.main(base)["written"] == 0              # identical rerun resumes
    assert gen.main(base + ["--batch_size", "1", "--n_samples", "3"])["written"] == 1  # not pixel settings
    config_copy = tmp_path / "other.yaml"
    config_copy.write_text((ckdir.parent / "configs" / "now-project.yaml").read_text() + "\n# edited\n")
    ckpt_copy = tmp_path / "backbone2.ckpt"
    shutil.copy(work / "backbone.ckpt", ckpt_copy)
    with torch.no_grad():
        sd = torch.load(ckpt_copy, weights_only=True)
        k = next(iter(sd["state_dict"]))
        sd["state_dict"][k] = sd["state_dict"][k] + 1
        torch.save(sd, ckpt_copy)
    masks_copy = tmp_path / "masks"
    shutil.copytree(data / "brick" / "ground_truth" / "scratch", masks_copy)
    changed = {
        "refine_steps": ["--refine_steps", "1"],
        "eta": ["--eta", "0.5"],
        "data_root": ["--data_root", str(data / "brick" / "train" / "good")],
        "mask_path": ["--mask_path", str(masks_copy)],
        "layout": ["--layout", "texture_ad"],
        "config": ["--config", str(config_copy)],
        "ckpt": ["--ckpt", str(ckpt_copy)],
        "weight_idx": ["--weight_idx", "7"],
        "mask_split": ["--mask_split", "all"],
        "seed": ["--seed", "1"],
        "steps": ["--steps", "5"],
        "sampler": ["--sampler", "ddim"],
        "t_start": ["--t_start", "500"],
        "farm_mode": ["--farm_mode", "off"],
        "prompt": ["--prompt", "Defect *"],
    }
    for setting, flags in changed.items():
        with pytest.raises(UserError, match=rf"other settings \(.*\b{setting}\b"):
            gen.main(base + flags)
    assert sorted(p.name for p in (out / "brick" / "scratch" / "image").iterdir()) == ["0.png", "1.png", "2.png"]


# --------------------------------------------------------------------------- 6. noise per defect
def test_pair_noise_differs_across_defect_folders(world, tmp_path):
    assert pair_seed(0, "brick", "scratch", 0) != pair_seed(0, "brick", "crack", 0)
    assert pair_seed(0, "brick", "scratch", 0) == pair_seed(0, "brick", "scratch", 0)
    work, data, ckdir = world
    for defect in ("scratch", "crack"):
        gen.main(gen_args(data, ckdir, tmp_path, "--n_samples", "2", anomaly=defect))
    a, b = (read_index(tmp_path / "brick" / d) for d in ("scratch", "crack"))
    assert [r["seed"] for r in a] != [r["seed"] for r in b]
    assert a[0]["seed"] == pair_seed(0, "brick", "scratch", 0)


# ---------------------------------------------------------------------------- 7. evaluation leaks
def test_comparison_refuses_pairs_whose_generator_saw_test_images(tmp_path):
    data = make_dataset(tmp_path / "data")
    ckdir = make_run(tmp_path, data, split="all")      # the generator trained on every real anomaly
    gen.main(gen_args(data, ckdir, tmp_path / "pairs", "--n_samples", "1"))
    index = index_category("mvtec", data, "brick")
    held_out = EvaluationSet(index, 32, "third")
    with pytest.raises(UserError, match="test image.* were training images"):
        check_leakage(tmp_path / "pairs" / "brick", held_out.items, "brick")
    note = check_leakage(tmp_path / "pairs" / "brick", held_out.items, "brick", allow=True)
    assert note.startswith("LEAK ALLOWED: 4 test image(s)")


def test_comparison_accepts_pairs_from_a_generator_on_the_other_side(tmp_path):
    data = make_dataset(tmp_path / "data")
    ckdir = make_run(tmp_path, data, split="third")
    gen.main(gen_args(data, ckdir, tmp_path / "pairs", "--n_samples", "1"))
    held_out = EvaluationSet(index_category("mvtec", data, "brick"), 32, "third")
    assert check_leakage(tmp_path / "pairs" / "brick", held_out.items, "brick") is None
    # a copy of the dataset elsewhere is still recognised (match by category/defect/file name)
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    all_side = EvaluationSet(index_category("mvtec", copy, "brick"), 32, "all")
    with pytest.raises(UserError, match="2 test image"):
        check_leakage(tmp_path / "pairs" / "brick", all_side.items, "brick")


# ------------------------------------------------------------------------------------ 8. init words
def test_official_init_words_for_mvtec_defects(tmp_path):
    from ldm.train_all import init_word_for, known_init_word

    assert known_init_word("mvtec", "pill", "scratch") == "type"
    assert known_init_word("mvtec", "cable", "poke_insulation") == "poke"
    assert known_init_word("btad", "01", "ko") == "broken"
    assert known_init_word("visa", "candle", "damage") is None
    # the table wins over the tokenizer rule; unknown datasets keep the rule
    assert init_word_for("broken_large", None, "anomaly", "mvtec", "bottle") == "large"
    assert init_word_for("broken_large", None, "anomaly", "visa", "bottle") == "anomaly"


def test_train_all_plans_official_init_words(tmp_path, capsys):
    from ldm.train_all import main
    from tests.fixtures_data import make_mvtec

    root = make_mvtec(tmp_path / "mvtec")
    assert main(["--config", "configs/fast/mvtec.yaml", "--dataset", str(root), "--dry_run"]) == 0
    printed = capsys.readouterr().out
    lines = [ln for ln in printed.splitlines() if "bottle" in ln and "broken_large" in ln]
    assert lines and "--init_word large" in lines[0]
    assert any("--init_word contamination" in ln for ln in printed.splitlines() if "contamination" in ln)


# ------------------------------------------------------------------ the same path for STAGE runs
def test_stage_runs_generate_through_the_same_library_path(tmp_path):
    import dataclasses

    from ldm.generation import generate_pairs
    from tests.tiny_configs import stage_config

    data = make_dataset(tmp_path / "data")
    ckdir = make_run(tmp_path, data, config=stage_config)
    assert sorted(p.name for p in ckdir.glob("*-5.pt")) == ["embeddings_gs-5.pt", "fine_image-5.pt",
                                                           "fine_mask-5.pt"]
    with pytest.raises(UserError, match="sampler must be one of"):
        gen.main(gen_args(data, ckdir, tmp_path / "out"))             # FAST's default sampler: refused
    stats = gen.main(gen_args(data, ckdir, tmp_path / "out", "--sampler", "stage", "--steps", "5"))
    assert stats["written"] == 5 and stats["nfe"] >= 5
    root = tmp_path / "out" / "brick" / "scratch"
    prov = json.loads((root / "provenance.json").read_text())
    assert prov["generator"] == "STAGE" and len(prov["training_anomalies"]) == 2
    # official STAGE does not paste: the background is the decoder's, and its error is reported, not hidden
    rows = read_index(root)
    assert len(rows) == 5 and all(r["background_error"] > 0 for r in rows)
    for n in range(5):
        strip = np.asarray(Image.open(root / "image-mask-ori" / f"{n}.png"))
        img, mask, original = strip[:, :32], strip[:, 32:64, 0], strip[:, 64:]
        assert not np.array_equal(img[mask == 0], original[mask == 0])
    # the paste option (a STAGE sampler option, reached through GenerationOptions.extra) restores the
    # exact background; it changes pixels, so the first folder refuses it
    opt = gen.options(gen_args(data, ckdir, tmp_path / "out", "--sampler", "stage", "--steps", "5"))
    with pytest.raises(UserError, match="extra"):
        generate_pairs(dataclasses.replace(opt, extra={"paste": True}), log=lambda *_: None)
    pasted = generate_pairs(dataclasses.replace(opt, outdir=str(tmp_path / "pasted"), extra={"paste": True}),
                            log=lambda *_: None)
    assert pasted["written"] == 5
    root = tmp_path / "pasted" / "brick" / "scratch"
    assert all(r["background_error"] == 0 for r in read_index(root))
    for n in range(5):
        strip = np.asarray(Image.open(root / "image-mask-ori" / f"{n}.png"))
        img, mask, original = strip[:, :32], strip[:, 32:64, 0], strip[:, 64:]
        assert np.array_equal(img[mask == 0], original[mask == 0])   # exact background (paste on)


def test_grounding_runs_generate_through_the_same_library_path(tmp_path, monkeypatch):
    """GroundingAnomaly: NDI starts at the model's t_start, every name of the run is kept, exact paste."""
    from ldm.generation import generate_pairs
    from tests.tiny_configs import grounding_config

    data = make_dataset(tmp_path / "data", defects=("scratch", "crack"))
    ckdir = make_run(tmp_path, data, names=("brick+scratch", "brick+crack"), config=grounding_config)
    opt = gen.options(gen_args(data, ckdir, tmp_path / "out", "--steps", "6", "--n_samples", "2"))
    run = load_run(opt, torch.device("cpu"))
    assert sorted(run.model.embedding_manager.string_to_param_dict) == ["brick+crack", "brick+scratch"]
    calls = record_timesteps(run.model, monkeypatch)
    out = generate_pairs(opt, run=run, log=lambda *_: None)
    assert out["written"] == 2 and calls[0] == 500                    # NDI: the first call at t_start
    settings = json.loads((tmp_path / "out" / "brick" / "scratch" / "synthesis.json").read_text())
    assert settings["t_start"] == 500 and settings["method"] == "groundinganomaly"
    root = tmp_path / "out" / "brick" / "scratch"
    for n in range(2):
        strip = np.asarray(Image.open(root / "image-mask-ori" / f"{n}.png"))
        img, mask, original = strip[:, :32], strip[:, 32:64, 0], strip[:, 64:]
        assert np.array_equal(img[mask == 0], original[mask == 0])


# ---------------------------------------------------- 10. a decoder that shifts colours is reported
class _ShiftingFirstStage:
    """Encodes as the identity and decodes with a fixed colour cast: the closed form of the check."""
    device = torch.device("cpu")

    def __init__(self, shift):
        self.shift = torch.tensor(shift, dtype=torch.float32).view(1, 3, 1, 1)

    def encode_to_latent(self, x):
        return x

    def decode_first_stage(self, z):
        return z + self.shift


def test_first_stage_round_trip_measures_psnr_and_colour_shift():
    from ldm.first_stage_check import round_trip, verdict

    images = [np.zeros((8, 8, 3), np.float32) for _ in range(3)]
    exact = round_trip(_ShiftingFirstStage([0.0, 0.0, 0.0]), images)
    assert exact["images"] == 3 and exact["colour_shift"] == 0.0 and verdict(exact) is None
    green = round_trip(_ShiftingFirstStage([0.0, 0.3, 0.0]), images)
    assert green["colour_shift"] == pytest.approx(0.3 * 127.5 / 3, abs=0.01)       # 12.75 levels
    assert green["psnr_db"] == pytest.approx(10 * np.log10(4 / (0.09 / 3)), abs=0.01)  # 21.25 dB
    assert "colour shift 12.8/255" in verdict(green)
    blurred = {"images": 3, "psnr_db": 15.0, "colour_shift": 0.5}
    assert "PSNR 15.0 dB" in verdict(blurred)


class _FadingFirstStage(_ShiftingFirstStage):
    """Decodes every pixel halfway to mid-grey: a defect keeps half its contrast against its background."""

    def decode_first_stage(self, z):
        return 0.5 * z + self.shift


def test_defect_contrast_is_the_share_of_real_contrast_the_round_trip_keeps():
    from ldm.first_stage_check import defect_contrast, defect_verdict

    image = np.full((8, 8, 3), -0.2, np.float32)
    image[2:4, 2:6] = 0.6                               # a bright defect: contrast 0.8 = 102 levels
    mask = np.zeros((8, 8), np.float32)
    mask[2:4, 2:6] = 1
    images, masks = [image, image], [mask, mask]
    exact = defect_contrast(_ShiftingFirstStage([0.1, -0.1, 0.2]), images, masks)  # a cast, not a fade
    assert exact["defects"] == 2 and exact["kept"] == pytest.approx(1.0) and defect_verdict(exact) is None
    assert exact["contrast_real"] == pytest.approx(0.8 * 127.5, abs=0.01)
    faded = defect_contrast(_FadingFirstStage([0.0, 0.0, 0.0]), images, masks)
    assert faded["kept"] == pytest.approx(0.5) and faded["contrast_decoded"] == pytest.approx(0.4 * 127.5, abs=0.01)
    assert "keeps only 50% of the real defects' contrast" in defect_verdict(faded)
    empty = defect_contrast(_FadingFirstStage([0.0, 0.0, 0.0]), images, [np.zeros((8, 8))] * 2)
    assert empty["defects"] == 0 and defect_verdict(empty) is None  # no defect pixels: nothing to measure


def test_generation_records_the_round_trip_and_warns_when_poor(world, tmp_path, capsys):
    work, data, ckdir = world  # random tiny weights: the autoencoder reproduces nothing
    gen.main(gen_args(data, ckdir, tmp_path / "out", "--n_samples", "3"))
    prov = json.loads((tmp_path / "out" / "brick" / "scratch" / "provenance.json").read_text())
    stats = prov["first_stage_round_trip"]
    assert 1 <= stats["images"] <= 3 and stats["psnr_db"] < 20
    defects = prov["first_stage_defect_contrast"]  # the generator side of the real scratches, through the decoder
    assert defects["defects"] >= 1 and defects["contrast_real"] > 0 and defects["kept"] is not None
    assert "the autoencoder reproduces these normal images poorly" in capsys.readouterr().out
