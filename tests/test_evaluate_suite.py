"""Suite files: typed, checked before anything loads, every problem named (key, model, file)."""

import pytest
import yaml

from mvtune.evaluate.suite import GENERIC, SuiteError, load_suite, parse_suite

CONCEPTS = {
    "subjects": ["duck"],
    "concepts": {
        "firefighter": {
            "prompts": ["a duck as a firefighter with a red helmet"],
            "attributes": {
                "helmet": {"phrases": ["red helmet", "yellow helmet", "fire helmet"], "positive": "a red helmet",
                           "contrast": "a bare head"},
            },
        },
    },
}


@pytest.fixture
def files(tmp_path, sample_meshes_dir):
    (tmp_path / "base").mkdir()
    (tmp_path / "clip").mkdir()
    (tmp_path / "adapter.safetensors").write_bytes(b"x")
    mesh = sorted(sample_meshes_dir.glob("*.glb"))[0]
    return {
        "models": [{"name": "base", "base_model": "base"}, {"name": "tuned", "base_model": "base",
                                                          "adapter": "adapter.safetensors"}],
        "meshes": {"files": [str(mesh)]},
        "prompts": {"concepts": CONCEPTS, "per_concept": 2, "generic": 3},
        "seeds": [0, 1],
        "scorers": [{"name": "clip", "path": "clip"}],
    }


def _write(tmp_path, data, name="suite.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_valid_suite_resolves_paths_prompts_and_meshes(tmp_path, files):
    suite = load_suite(_write(tmp_path, files), ["seeds=[3,4,5]"])
    assert suite.reference.name == "base" and suite.models[1].adapter == tmp_path / "adapter.safetensors"
    assert suite.seeds == [3, 4, 5] and suite.scorers[0].path == tmp_path / "clip"
    rows = suite.prompt_rows()
    concept = [r for r in rows if r.group == "firefighter"]
    generic = [r for r in rows if r.group == GENERIC]
    assert len(concept) == 2 and concept[0].prompt == "a duck as a firefighter with a red helmet"
    assert concept[0].attributes == (("helmet", "a red helmet", "a bare head"),)
    assert len(generic) == 3 and all("duck" in r.prompt for r in generic)
    assert len({r.id for r in rows}) == len(rows)
    assert [m.id for m in suite.mesh_items()] and suite.mesh_items()[0].ground_truth is None


def test_unknown_keys_name_the_closest_valid_one(files):
    files["modles"] = files.pop("models")
    files["meshes"]["splt"] = "test"
    with pytest.raises(SuiteError) as err:
        parse_suite(files)
    assert "'modles' (did you mean 'models'?)" in str(err.value)
    assert "'meshes.splt' (did you mean 'meshes.split'?)" in str(err.value)


def test_unknown_model_key_is_named(files):
    files["models"][1]["adaptr"] = "adapter.safetensors"
    files["scorers"][0]["pth"] = "clip"
    with pytest.raises(SuiteError) as err:
        parse_suite(files)
    assert "'models.1.adaptr' (did you mean 'models.1.adapter'?)" in str(err.value)
    assert "'scorers.0.pth' (did you mean 'scorers.0.path'?)" in str(err.value)


def test_suite_without_prompts_is_refused(files):
    files["prompts"] = {"generic": 0}
    with pytest.raises(SuiteError, match="no prompts"):
        parse_suite(files)


def test_missing_files_are_all_listed_with_their_item(tmp_path, files):
    files["models"][1]["adapter"] = "missing.safetensors"
    files["scorers"][0]["path"] = "no-clip"
    files["meshes"]["files"].append("gone.glb")
    with pytest.raises(SuiteError) as err:
        load_suite(_write(tmp_path, files))
    message = str(err.value)
    assert "models.tuned.adapter" in message and "missing.safetensors" in message
    assert "scorers.clip" in message and "no-clip" in message
    assert "gone.glb" in message


def test_duplicate_names_and_protected_prompts(tmp_path, files):
    files["models"][1]["name"] = "base"
    with pytest.raises(SuiteError, match="duplicate names"):
        parse_suite(files)
    files["models"][1]["name"] = "tuned"
    files["prompts"]["concepts"]["concepts"]["firefighter"]["prompts"] = ["Mario as a firefighter duck"]
    with pytest.raises(SuiteError, match="firefighter"):
        load_suite(_write(tmp_path, files))


def test_cli_bad_suite_exits_2_with_one_line(tmp_path, files, cli):
    files["prompts"] = {"generic": 0}
    result = cli("evaluate", _write(tmp_path, files), "--out", tmp_path / "out", expect=2)
    assert "no prompts" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_demo_suite_compares_the_base_with_its_fine_tune(tmp_path, ducks):
    from mvtune.evaluate.demo import demo_suite

    (tmp_path / "base").mkdir()
    suite = demo_suite(tmp_path / "base", tmp_path / "ft.safetensors", ducks, tmp_path / "clip", steps=2)
    assert [m.name for m in suite.models] == ["base", "fine-tune"] and suite.reference.adapter is None
    assert suite.models[1].adapter == tmp_path / "ft.safetensors" and suite.sampling.steps == 2
    assert {p.group for p in suite.prompt_rows()} == {"firefighter", "generic"}
    assert all(m.ground_truth is not None for m in suite.mesh_items())  # the held-out (test) ducks
