"""`python -m kd_jax.main` with bad input: exit 2, one line, nothing written."""

import pytest

from tests import helpers

QS = "--config=configs/quickstart.py"
CASES = [
    ([QS, "--config.kd.temperature=0"], "config.kd.temperature=0.0 must be > 0"),
    ([QS, "--config.kd.temperature=-2"], "must be > 0"),
    ([QS, "--config.kd.alpha=1.5"], "config.kd.alpha=1.5 must be in [0, 1]"),
    ([QS, "--config.kd.alpha=-0.1"], "must be in [0, 1]"),
    ([QS + ":schedule=step"], "unknown config.kd.schedule 'step'; allowed: cosine, linear"),
    ([QS, "--config.kd.method=hinton"], "unknown config.kd.method 'hinton'; allowed: none"),
    ([QS, "--config.kd.method=fitnets"], "method 'fitnets' needs config.kd.hint_student_layer"),
    ([QS, "--config.kd.method=fitnets", "--config.kd.hint_student_layer=hidden1", "--config.kd.hint_teacher_layer=conv9"], "config.kd.hint_teacher_layer='conv9' is not a feature of mlp_1200x2; allowed: hidden1"),
    ([QS, "--config.kd.method=fitnets", "--config.student.name=simple_cnn",
      "--config.teacher.name=simple_cnn", "--config.kd.hint_student_layer=block1",
      "--config.kd.hint_teacher_layer=block2"],
     "hint layers do not match in spatial size at 28px: student simple_cnn.block1 is 14x14x88, teacher simple_cnn.block2 is 7x7x176"),
    ([QS, "--config.kd.assistants=mlp,vgg99"], "unknown teacher assistant (config.kd.assistants) 'vgg99'"),
    ([QS, "--config.kd.method=subclass", "--config.kd.subclasses=1"], "config.kd.subclasses=1 must be >= 2"),
    ([QS, "--config.student.name=resnet9"], "unknown config.student.name 'resnet9'; allowed:"),
    ([QS, "--config.teacher.name=vgg99"], "unknown config.teacher.name 'vgg99'"),
    ([QS, "--config.dataset.name=imagenet"], "unknown config.dataset.name 'imagenet'"),
    ([QS, "--config.num_epochs=0"], "config.num_epochs=0 must be a positive integer"),
    ([QS, "--config.batch_size=-8"], "config.batch_size=-8 must be a positive integer"),
    ([QS + ":foo=1"], "config arg key 'foo' does not exist"),
    ([QS, "--config.nonexistent=1"], "unknown config field"),
    (["--config=configs/missing.py"], "cannot load config file 'configs/missing.py'"),
    ([QS, "--config.dataset.name=folder", "--config.dataset.data_dir=/no/such/dir"],
     "data folder '/no/such/dir' does not exist"),
    ([QS, "--config.dataset.name=cifar10", "--config.dataset.data_dir=/no/such/dir"],
     "TFDS dataset 'cifar10' needs config.dataset.data_dir"),
    ([QS, "--config.teacher.checkpoint=/no/such/ckpt"], "no kd_jax model checkpoint in '/no/such/ckpt'"),
]


@pytest.mark.parametrize("args,message", CASES, ids=[c[1][:40] for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(args, message, tmp_path):
  workdir = tmp_path / "wd"
  r = helpers.run_cli(*args, f"--workdir={workdir}", timeout=300)
  assert r.returncode == 2, (r.returncode, r.stderr[-1500:])
  lines = [l for l in r.stderr.splitlines() if l.startswith("kd_jax: error:")]
  assert len(lines) == 1, r.stderr[-1500:]
  assert message in lines[0], lines[0]
  assert "Traceback" not in r.stderr
  assert not workdir.exists()
