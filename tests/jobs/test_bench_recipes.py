"""A tiny version of the patient-and-consistent experiment: two settings, two lengths."""

import yaml

from kdforge.jobs.bench_recipes import run_recipes
from tests.conftest import synthetic_config


def test_recipes_benchmark_tiny(tmp_path):
    teacher = synthetic_config(tmp_path, name="t", student={"name": "cnn2d"})
    (tmp_path / "teacher.yaml").write_text(yaml.safe_dump(teacher))
    settings = {}
    for view in ("fixed", "function_matching"):
        cfg = synthetic_config(tmp_path, name=view, student={"name": "mlp", "hidden": [8]},
                               teacher={"run": "placeholder"}, view={"name": view},
                               losses=[{"name": "kd", "T": 1}])
        (tmp_path / f"{view}.yaml").write_text(yaml.safe_dump(cfg))
        settings[view] = str(tmp_path / f"{view}.yaml")
    spec = {"teacher": str(tmp_path / "teacher.yaml"), "settings": settings, "epochs": [1, 2],
            "seeds": [0], "output_dir": str(tmp_path / "recipes")}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    out = run_recipes(tmp_path / "spec.yaml", results=tmp_path / "res", verbose=False)
    fm = out["settings"]["function_matching"]["2"]
    assert fm["accuracy"]["n"] == 1 and 0 <= fm["agreement"]["mean"] <= 1
    assert (tmp_path / "res" / "recipes.png").stat().st_size > 1000
    assert "| function_matching |" in (tmp_path / "res" / "recipes.md").read_text()
