"""The resumable epoch loop: records, checkpoints, an interrupted run resumed to the same history."""

import json

import numpy as np
import pytest

from ntkdyn.runs.resume import interruptible
from ntkdyn.train.epochs import metrics_record, train_epochs

STEPS, EPOCHS = 4, 3


def batches(epoch, start):
    rng = np.random.default_rng([7, epoch])  # fixed by the epoch, as the loop requires
    data = rng.normal(size=(STEPS, 2))
    yield from data[start:]


def step(state, batch):
    w = state["w"] * 0.9 + batch
    return {"w": w, "n": state["n"] + 1}, {"loss": float(np.sum(w**2)), "w": w}


def evaluate(state):
    return {"val": {"avg_acc": float(state["w"][0]), "worst_group_acc": float(state["w"][1])}}


def init():
    return {"w": np.zeros(2), "n": np.int32(0)}


def run(tmp, **kw):
    args = dict(
        epochs=EPOCHS,
        steps_per_epoch=STEPS,
        batch_size=8,
        checkpoint_dir=tmp,
        checkpoint_every=3,
        log_every=2,
        tags={"method": "toy"},
        desc="toy",
    )
    step_fn = kw.pop("step_fn", step)
    return train_epochs(init(), step_fn, batches, evaluate, **(args | kw))


def strip(records):
    return [{k: v for k, v in r.items() if k != "images_per_s"} for r in records]


def test_history_records_and_done_file(tmp_path):
    out = run(tmp_path)
    assert [e["epoch"] for e in out["epochs"]] == [1, 2, 3]
    train = [r for r in out["records"] if r["kind"] == "train"]
    # every log_every steps and at each epoch's end
    assert [r["step"] for r in train] == [2, 4, 6, 8, 10, 12]
    assert train[0]["method"] == "toy" and len(train[0]["w"]) == 2
    evals = [r for r in out["records"] if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [4, 8, 12] and "val_avg_acc" in evals[0]
    assert json.loads((tmp_path / "done.json").read_text()) == json.loads(json.dumps(out))
    # reference: the same steps by hand
    state = init()
    for epoch in range(EPOCHS):
        for b in batches(epoch, 0):
            state, _ = step(state, b)
    assert out["epochs"][-1]["val"]["avg_acc"] == pytest.approx(state["w"][0])
    # a finished run is returned as it is with resume, refused without
    assert run(tmp_path, resume=True) == json.loads(json.dumps(out))
    with pytest.raises(ValueError, match="--resume"):
        run(tmp_path)


def test_interrupted_run_resumes_to_the_same_history(tmp_path):
    ref = run(tmp_path / "ref")
    calls = {"n": 0}

    def dying(state, batch):
        calls["n"] += 1
        if calls["n"] == 7:  # after the mid-epoch checkpoint at step 6
            raise KeyboardInterrupt
        return step(state, batch)

    with pytest.raises(KeyboardInterrupt):
        train_epochs(
            init(),
            dying,
            batches,
            evaluate,
            epochs=EPOCHS,
            steps_per_epoch=STEPS,
            batch_size=8,
            checkpoint_dir=tmp_path / "b",
            checkpoint_every=3,
            log_every=2,
            tags={"method": "toy"},
        )
    assert not (tmp_path / "b" / "done.json").exists()
    resumed = run(tmp_path / "b", resume=True)
    assert resumed["epochs"] == ref["epochs"]
    assert strip(resumed["records"]) == strip(ref["records"])


@pytest.mark.parametrize("at", [5, 8])  # mid-epoch; the last step of epoch 2
def test_sigint_saves_a_checkpoint_at_once_and_the_run_resumes_to_the_same_history(tmp_path, at):
    import os
    import signal

    from ntkdyn.train.checkpoint import list_checkpoints

    ref = run(tmp_path / "ref", checkpoint_every=100)
    calls = {"n": 0}

    def signalled(state, batch):  # Ctrl-C arrives during step `at`
        calls["n"] += 1
        if calls["n"] == at:
            os.kill(os.getpid(), signal.SIGINT)
        return step(state, batch)

    with pytest.raises(KeyboardInterrupt), interruptible("groups", ["groups", "--out", "x"]):
        run(tmp_path / "b", step_fn=signalled, checkpoint_every=100)
    assert calls["n"] == at  # stopped after that step, not at the next periodic checkpoint
    saved = [p.name for p in list_checkpoints(tmp_path / "b")]
    assert saved[-1] == f"ckpt_{at:010d}.npz" and not (tmp_path / "b" / "done.json").exists()
    resumed = run(tmp_path / "b", resume=True, checkpoint_every=100)
    assert resumed["epochs"] == ref["epochs"]
    assert strip(resumed["records"]) == strip(ref["records"])


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="steps_per_epoch: must be >= 1"):
        run(tmp_path, steps_per_epoch=0)
    with pytest.raises(ValueError, match="batches: epoch 1 yielded 4 batches"):
        run(tmp_path / "short", steps_per_epoch=5)


def test_metrics_record():
    rec = metrics_record({"loss": np.float32(0.5), "q": np.array([0.25, 0.75])})
    assert rec == {"loss": 0.5, "q": [0.25, 0.75]}


def test_hooks_see_every_nth_step_and_each_epochs_end(tmp_path, capsys):
    from ntkdyn.train.epochs import progress_hook
    from ntkdyn.train.hooks import every

    seen = []
    hook = every(3, lambda r: seen.append((r.step, r.epoch, r.final, r.metrics["loss"])))
    out = run(tmp_path, hooks=[hook, progress_hook(5, desc="toy", total_steps=12)])
    # steps 3, 6, 9, 12 (every 3) and 4, 8 (ends of epochs), the last one final
    assert [(s, e, f) for s, e, f, _ in seen] == [
        (3, 1, False), (4, 1, False), (6, 2, False), (8, 2, False), (9, 3, False), (12, 3, True),
    ]  # fmt: skip
    # the loss a hook sees is the step's: the records of the same steps agree
    by_step = {r["step"]: r["loss"] for r in out["records"] if r["kind"] == "train"}
    assert all(loss == by_step[s] for s, _, _, loss in seen if s in by_step)
    lines = [x for x in capsys.readouterr().err.splitlines() if " step " in x]
    # progress: steps 5 and 10, and the ends of the epochs 4, 8, 12
    assert [int(x.split(" step ")[1].split("/")[0]) for x in lines] == [4, 5, 8, 10, 12]
    assert lines[0].startswith("[toy] epoch 1 step 4/12 loss ") and lines[0].endswith(" img/s")


def test_hooks_are_checked(tmp_path):
    with pytest.raises(ValueError, match=r"hooks\[0\]"):
        run(tmp_path, hooks=[lambda r: None])
    assert not (tmp_path / "done.json").exists()
