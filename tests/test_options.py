"""utils/options.py: one options dataclass from which the parser (and the studio and provenance) derive."""
from __future__ import annotations

import argparse
import dataclasses

import pytest

from utils.cli import ArgumentParser
from utils.errors import UserError
from utils.options import add_options, fields_with, option, options_from_args


@dataclasses.dataclass
class Job:
    root: str = option(help="input folder")
    steps: int = option(50, help="steps", parse=int, pixel=True, studio=True)
    kernel: str = option("exact", help="kernel", choices=("exact", "paper"), pixel=True)
    native: bool = option(False, help="keep sizes")
    ndi: bool = option(True, help="NDI on or off", pixel=True)
    progress: bool = option(True, help="no progress bar", flag="--no_progress")
    base: list = option(help="configs", default_factory=list, flag=("-b", "--base"), nargs="*",
                        metavar="config.yaml")
    rank: int = option(0, help="process rank", cli=False)


def parse(argv):
    p = ArgumentParser()
    add_options(p, Job)
    return p.parse_args(argv)


def test_each_field_is_one_flag_with_its_default_type_and_choices():
    a = parse(["--root", "r"])
    assert vars(a) == {"root": "r", "steps": 50, "kernel": "exact", "native": False, "ndi": "on",
                       "progress": True, "base": []}
    job = options_from_args(Job, a, rank=3)
    assert job == Job(root="r", steps=50, kernel="exact", native=False, ndi=True, progress=True, base=[], rank=3)
    a = parse(["--root", "r", "--steps", "7", "--kernel", "paper", "--native", "--ndi", "off", "--no_progress",
               "-b", "x.yaml", "y.yaml"])
    assert options_from_args(Job, a) == Job(root="r", steps=7, kernel="paper", native=True, ndi=False,
                                            progress=False, base=["x.yaml", "y.yaml"])


def test_required_fields_choices_and_cli_false_fields():
    with pytest.raises(UserError, match="--root"):
        parse([])
    with pytest.raises(UserError, match="invalid choice: 'x'"):
        parse(["--root", "r", "--kernel", "x"])
    with pytest.raises(UserError, match="invalid choice: 'maybe'"):
        parse(["--root", "r", "--ndi", "maybe"])
    with pytest.raises(UserError, match="unrecognized arguments: --rank"):
        parse(["--root", "r", "--rank", "1"])
    p = argparse.ArgumentParser()
    add_options(p, Job, skip=("steps", "kernel"))
    assert not hasattr(p.parse_args(["--root", "r"]), "steps")


def test_fields_with_selects_by_metadata():
    assert [f.name for f in fields_with(Job, "pixel")] == ["steps", "kernel", "ndi"]
    assert [f.name for f in fields_with(Job, "studio")] == ["steps"]
    assert fields_with(Job, "help")[0].metadata["help"] == "input folder"


def test_option_refuses_a_missing_help_and_two_defaults():
    with pytest.raises(TypeError):
        option(1)  # help is required
    with pytest.raises(ValueError, match="not both"):
        option(1, help="x", default_factory=list)


# ------------------------------------------------------------------ one edit adds a generation option
def test_a_new_generation_option_reaches_the_parser_the_studio_and_the_record(tmp_path):
    """One field added to the generation options, and nothing else edited: ``generate_with_mask.py``
    takes its flag, the studio shows its control and passes its value, synthesis.json records it."""
    import json

    import generate_with_mask
    from ldm.generation import GenerationOptions, TrainedRun, pixel_settings
    from ldm.pairs import check_manifest
    from ldm.studio.core import RunInfo, Studio

    Extended = dataclasses.make_dataclass(
        "Extended", [("grain", float, option(0.25, help="film grain strength", parse=float, pixel=True,
                                             studio=True))], bases=(GenerationOptions,))
    argv = ["--data_root", str(tmp_path), "--sample_name", "brick", "--anomaly_name", "scratch", "--pt_path",
            str(tmp_path), "--outdir", str(tmp_path / "out")]
    # the command line
    assert "--grain" in generate_with_mask.get_parser(Extended).format_help()
    opt = generate_with_mask.options(argv + ["--grain", "0.5"], cls=Extended)
    assert isinstance(opt, Extended) and opt.grain == 0.5
    assert generate_with_mask.options(argv, cls=Extended).grain == 0.25
    # the studio: a control after the others, its value reaching the options of a batch
    studio = Studio(tmp_path / "no-run-here", tmp_path / "pairs", options_class=Extended)
    assert [c.name for c in studio.controls] == ["sampler", "steps", "seed", "farm", "n", "grain"]
    grain = studio.controls[-1]
    assert (grain.label, grain.default, grain.kind) == ("grain", 0.25, "number")
    info = RunInfo("brick+scratch", tmp_path, tmp_path, "brick", "scratch", [1], {"size": 32})
    assert studio.options(info, grain="0.75", steps=4).grain == 0.75
    with pytest.raises(UserError, match="grain must be a number, got 'x'"):
        studio.options(info, grain="x")
    # the synthesis record (and so the rerun check)
    (tmp_path / "config.yaml").write_text("model: {}\n")
    (tmp_path / "backbone.ckpt").write_bytes(b"weights")
    run = TrainedRun(model=object(), config=None, config_path=tmp_path / "config.yaml", pt_path=tmp_path, step=1,
                     ckpt=tmp_path / "backbone.ckpt", name="brick+scratch", train={})
    check_manifest(tmp_path / "out", pixel_settings(run, opt, "third", "mvtec", 32))
    assert json.loads((tmp_path / "out" / "synthesis.json").read_text())["grain"] == 0.5
    with pytest.raises(UserError, match="grain"):  # a rerun with another value is refused, naming it
        check_manifest(tmp_path / "out", pixel_settings(run, dataclasses.replace(opt, grain=0.3), "third", "mvtec",
                                                        32))


def test_guidance_is_recorded_only_when_it_changes_the_pairs(tmp_path):
    """Folders generated before ``--guidance_scale`` existed (s = 1) keep their record, so their reruns
    resume; s ≠ 1 records the scale and the negative caption, so a rerun with other values is refused."""
    import generate_with_mask
    from ldm.generation import TrainedRun, pixel_settings
    from ldm.pairs import check_manifest

    argv = ["--data_root", str(tmp_path), "--sample_name", "brick", "--anomaly_name", "scratch", "--pt_path",
            str(tmp_path), "--outdir", str(tmp_path / "out")]
    (tmp_path / "config.yaml").write_text("model: {}\n")
    (tmp_path / "backbone.ckpt").write_bytes(b"weights")
    run = TrainedRun(model=object(), config=None, config_path=tmp_path / "config.yaml", pt_path=tmp_path, step=1,
                     ckpt=tmp_path / "backbone.ckpt", name="brick+scratch", train={})
    plain = pixel_settings(run, generate_with_mask.options(argv + ["--negative_prompt", "x"]), "third", "mvtec", 32)
    assert "guidance_scale" not in plain and "negative_prompt" not in plain
    guided = generate_with_mask.options(argv + ["--guidance_scale", "3", "--negative_prompt", "a photo of brick"])
    record = pixel_settings(run, guided, "third", "mvtec", 32)
    assert (record["guidance_scale"], record["negative_prompt"]) == (3.0, "a photo of brick")
    check_manifest(tmp_path / "out", record)
    with pytest.raises(UserError, match="negative_prompt"):
        check_manifest(tmp_path / "out", pixel_settings(
            run, dataclasses.replace(guided, negative_prompt=""), "third", "mvtec", 32))


def test_paste_colour_is_recorded_for_pasting_models_only(tmp_path):
    """``match`` is in the record of a model that pastes, so it never mixes with folders pasted raw (the
    default, recorded as nothing, as before the option existed); a model that does not paste (STAGE)
    records nothing."""
    import generate_with_mask
    from ldm.generation import TrainedRun, pixel_settings

    argv = ["--data_root", str(tmp_path), "--sample_name", "brick", "--anomaly_name", "scratch", "--pt_path",
            str(tmp_path), "--outdir", str(tmp_path / "out")]
    (tmp_path / "config.yaml").write_text("model: {}\n")
    (tmp_path / "backbone.ckpt").write_bytes(b"weights")

    class Model:
        def __init__(self, paste):
            self.paste = paste

        def pastes(self, sampler, guidance_kw):
            return self.paste

    def record(paste, *flags):
        run = TrainedRun(model=Model(paste), config=None, config_path=tmp_path / "config.yaml", pt_path=tmp_path,
                         step=1, ckpt=tmp_path / "backbone.ckpt", name="brick+scratch", train={})
        return pixel_settings(run, generate_with_mask.options(argv + list(flags)), "third", "mvtec", 32)

    assert record(True, "--paste_colour", "match")["paste_colour"] == "match"
    assert "paste_colour" not in record(True) and "paste_colour" not in record(True, "--paste_colour", "raw")
    assert "paste_colour" not in record(False, "--paste_colour", "match")
