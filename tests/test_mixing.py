"""Mixup and CutMix (kd_jax/data/mixing.py) against NumPy, inside the train
step (the teacher sees the student's mixed images, the label term mixes the
labels), in sweeps and in the teacher's cached augmented views."""
import dataclasses
import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from kd_jax import config_lib
from kd_jax import models
from kd_jax.data import datasets as data
from kd_jax.data import mixing
from kd_jax.study import report
from kd_jax.study import runner as study
from kd_jax.train import pipeline as train
from kd_jax.train import sharding
from kd_jax.train import stage
from kd_jax.train import step
from kd_jax.train import sweep
from kd_jax.train import teacher_cache
from tests import helpers

FM = {"dataset.mixup_alpha": 1.0, "dataset.mix_ratio": "folded",
      "dataset.mix_partner": "roll"}


def _draws(spec, n, batch=4, size=8):
  keys = jax.random.split(jax.random.PRNGKey(0), n)
  return jax.jit(jax.vmap(lambda k: mixing.draw(k, spec, batch, size, size)))(keys)


# ------------------------------------------------------- the mixing itself


def _ks_close(samples, cdf, lo=0.0, hi=1.0):
  """The Kolmogorov-Smirnov distance on a grid inside (lo, hi) below its 1%
  critical value 1.63 / sqrt(n) (the grid keeps off the ends, where float32
  rounds Beta samples onto 0 and 1)."""
  xs = np.linspace(lo, hi, 51)[1:-1]
  emp = np.mean(np.asarray(samples, np.float64)[:, None] <= xs, axis=0)
  assert np.max(np.abs(emp - cdf(xs))) < 1.63 / np.sqrt(len(samples))


@pytest.mark.parametrize("alpha", [0.2, 1.0, 2.0])
def test_ratio_is_beta_alpha_alpha(alpha):
  lam = np.asarray(_draws(mixing.MixSpec(mixup_alpha=alpha), 20000).lam)
  _ks_close(lam, lambda x: stats.beta.cdf(x, alpha, alpha))
  np.testing.assert_allclose(lam.mean(), 0.5, atol=0.01)
  np.testing.assert_allclose(lam.var(), 1 / (4 * (2 * alpha + 1)), rtol=0.05)


@pytest.mark.parametrize("alpha", [0.4, 1.0])
def test_folded_ratio_is_max_of_beta_and_its_complement(alpha):
  """big_vision's get_mixup: lam = max(u, 1 - u), u ~ Beta(alpha, alpha);
  with alpha = 1 (the function-matching configs) uniform on [0.5, 1]."""
  lam = np.asarray(_draws(mixing.MixSpec(alpha, 0.0, "folded"), 20000).lam)
  assert lam.min() >= 0.5 and lam.max() <= 1.0
  _ks_close(lam, lambda x: 2 * stats.beta.cdf(x, alpha, alpha) - 1, lo=0.5)
  if alpha == 1.0:
    _ks_close(lam, lambda x: 2 * x - 1, lo=0.5)


def test_partners_are_a_permutation_or_big_visions_roll():
  d = _draws(mixing.MixSpec(mixup_alpha=1.0), 50, batch=16)
  perms = np.asarray(d.partner_B)
  assert all(sorted(p) == list(range(16)) for p in perms)
  assert len({tuple(p) for p in perms}) == 50  # a new one every batch
  x = np.arange(16 * 3).reshape(16, 3)
  roll = np.asarray(_draws(mixing.MixSpec(1.0, 0.0, "beta", "roll"), 3,
                           batch=16).partner_B)
  for p in roll:
    np.testing.assert_array_equal(x[p], np.roll(x, 1, axis=0))


def _numpy_mix(x, labels, num_classes, weight, lam, partner):
  """The reference: per-pixel weights of the own image, labels by lam."""
  w = np.asarray(weight)[None, :, :, None]
  images = w * x + (1 - w) * x[partner]
  onehot = np.eye(num_classes)[labels]
  return images, lam * onehot + (1 - lam) * onehot[partner]


@pytest.mark.parametrize("spec", [mixing.MixSpec(mixup_alpha=0.5),
                                  mixing.MixSpec(cutmix_alpha=1.0),
                                  mixing.MixSpec(1.0, 1.0, "folded", "roll")])
def test_images_and_labels_match_numpy(spec):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(6, 10, 10, 3)).astype(np.float32)
  labels = rng.integers(0, 4, 6)
  for i in range(20):
    mix = mixing.draw(jax.random.PRNGKey(i), spec, 6, 10, 10)
    want_x, want_y = _numpy_mix(x, labels, 4, mix.weight_HxW, float(mix.lam),
                                np.asarray(mix.partner_B))
    np.testing.assert_allclose(mixing.mix_images(jnp.asarray(x), mix), want_x,
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(mixing.soft_labels(jnp.asarray(labels), 4, mix),
                               want_y, rtol=1e-6)
    np.testing.assert_allclose(float(mix.lam), np.mean(
        np.asarray(mix.weight_HxW, np.float64)), rtol=1e-6)


def _numpy_cutmix_box(lam, cy, cx, h, w):
  """Yun et al.'s rand_bbox: sides int(H sqrt(1 - lam)), centre (cy, cx),
  clipped at the border."""
  cut_h, cut_w = int(h * np.sqrt(1 - lam)), int(w * np.sqrt(1 - lam))
  y0, y1 = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, h)
  x0, x1 = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, w)
  weight = np.ones((h, w))
  weight[y0:y1, x0:x1] = 0
  return weight, 1 - (y1 - y0) * (x1 - x0) / (h * w)


def test_cutmix_box_matches_numpy():
  for i in range(200):
    key = jax.random.PRNGKey(i)
    lam = float(jax.random.uniform(jax.random.fold_in(key, 7)))
    weight, kept = mixing.cutmix_box(key, jnp.float32(lam), 12, 9)
    ky, kx = jax.random.split(key)
    cy, cx = (int(jax.random.randint(ky, (), 0, 12)),
              int(jax.random.randint(kx, (), 0, 9)))
    want_w, want_kept = _numpy_cutmix_box(np.float32(lam), cy, cx, 12, 9)
    np.testing.assert_array_equal(weight, want_w)
    np.testing.assert_allclose(float(kept), want_kept, rtol=1e-6)


def test_both_kinds_take_turns():
  d = _draws(mixing.MixSpec(mixup_alpha=1.0, cutmix_alpha=1.0), 4000)
  w = np.asarray(d.weight_HxW)
  blend = np.all((w > 0) & (w < 1), axis=(1, 2))  # mixup: lam everywhere
  box = np.all((w == 0) | (w == 1), axis=(1, 2))  # CutMix (maybe no box)
  assert np.all(blend ^ box) and 0.45 < blend.mean() < 0.55


# ------------------------------------------------------------- the step


def _setup(**overrides):
  c = helpers.tiny_config("dataset=digits,method=vanilla",
                          scratch_baseline=False, **{**FM, **overrides})
  ds = data.load(c)
  teacher = models.get_model("mlp_small", num_classes=ds.num_classes)
  t_vars = models.init(teacher, jax.random.PRNGKey(9), c.dataset.image_size)
  specs = config_lib.read_specs(c)
  run = stage.Stage(specs, role="student", model_name=c.student.name,
                    method="vanilla", stage_dir="/nonexistent", num_epochs=2,
                    learning_rate=c.learning_rate, ds=ds,
                    mesh=jax.sharding.Mesh(np.asarray(jax.devices()[:1]),
                                           ("data",)),
                    teacher=step.Frozen(teacher, t_vars))
  tx, state = run.init_state()
  batch = next(data.train_batches(ds.train, global_batch=c.batch_size, seed=0,
                                  epoch=0, num_steps=1, image_size=28))
  return c, run, tx, state, batch, (teacher, t_vars)


def _numpy_view(spec, images, global_step):
  """The step's input rebuilt outside it: crop/flip, then the NumPy mix of
  the draw the step's (data seed, step) key gives."""
  rng = step.step_rngs(spec.data_seed, global_step)[0]
  x = np.asarray(spec.preprocess(jnp.asarray(images), rng))
  mix = mixing.draw(jax.random.fold_in(rng, step.MIX_STREAM),
                    spec.preprocess.mix, *x.shape[:3])
  return _numpy_mix(x, np.zeros(len(x), int), 1, mix.weight_HxW,
                    float(mix.lam), np.asarray(mix.partner_B))[0], mix, x


def _log_softmax(z):
  z = np.asarray(z, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_teacher_sees_the_students_mixed_images(monkeypatch):
  """alpha = 1, T = 1: the step's loss is KL(teacher || student) on one
  input; it equals the KL with both models on the NumPy-mixed view, not
  with the teacher on the unmixed one."""
  c, run, tx, state, batch, (teacher, t_vars) = _setup(
      **{"kd.alpha": 1.0, "kd.temperature": 1.0})
  spec = run.spec()
  x_mixed, mix, x_plain = _numpy_view(spec, batch["image"], 0)
  assert 0.5 <= float(mix.lam) < 1.0
  _, m = jax.jit(step.make_train_step(spec, tx))(
      state, batch, step.hyperparams(config_lib.read_specs(c)), t_vars)
  student = lambda x: spec.student.apply({"params": state.params["student"]},
                                         jnp.asarray(x, jnp.float32), train=True)
  def kl(t_x, s_x):
    lt = _log_softmax(teacher.apply(t_vars, jnp.asarray(t_x, jnp.float32)))
    return np.mean(np.sum(np.exp(lt) * (lt - _log_softmax(student(s_x))), -1))
  assert float(m["loss"]) == pytest.approx(kl(x_mixed, x_mixed), rel=1e-5)
  assert float(m["loss"]) != pytest.approx(kl(x_plain, x_mixed), rel=1e-3)
  # The teacher function the cache and the sweeps run gives the same logits.
  live = step.live_teacher_logits(spec, t_vars, jnp.asarray(batch["image"]), 0)
  np.testing.assert_allclose(live, teacher.apply(t_vars, jnp.asarray(
      x_mixed, jnp.float32)), rtol=1e-5, atol=1e-5)


def test_label_term_mixes_the_labels():
  """alpha = 0: the loss is the cross-entropy of the soft targets lam y +
  (1 - lam) y_partner, i.e. lam CE(y) + (1 - lam) CE(y_partner)."""
  c, run, tx, state, batch, (_, t_vars) = _setup(**{"kd.alpha": 0.0})
  spec = run.spec()
  x_mixed, mix, _ = _numpy_view(spec, batch["image"], 0)
  _, m = jax.jit(step.make_train_step(spec, tx))(
      state, batch, step.hyperparams(config_lib.read_specs(c)), t_vars)
  ls = _log_softmax(spec.student.apply({"params": state.params["student"]},
                                       jnp.asarray(x_mixed), train=True))
  onehot = np.eye(ls.shape[-1])[batch["label"]]
  lam = float(mix.lam)
  soft = lam * onehot + (1 - lam) * onehot[np.asarray(mix.partner_B)]
  assert float(m["loss"]) == pytest.approx(-np.mean(np.sum(soft * ls, -1)),
                                           rel=1e-5)


def test_mixes_depend_on_data_seed_and_step_only():
  _, run, _, _, batch, _ = _setup()
  spec = run.spec()
  images = jnp.asarray(batch["image"])
  view = lambda sp, s: np.asarray(step.training_view(sp, images, s)[0])
  np.testing.assert_array_equal(view(spec, 3), view(spec, 3))
  assert not np.allclose(view(spec, 3), view(spec, 4))
  other_seed = dataclasses.replace(spec, data_seed=1)
  assert not np.allclose(view(spec, 3), view(other_seed, 3))
  # Mixing off: the same crop/flip as before (mixing has its own key).
  plain = dataclasses.replace(spec.preprocess, mix=mixing.MixSpec())
  rng = step.step_rngs(spec.data_seed, 3)[0]
  np.testing.assert_array_equal(plain.train_view(images, rng)[0],
                                spec.preprocess(images, rng))


def test_vmapped_cells_share_the_data_seeds_mixes():
  """Two cells with other seeds, T and alpha = 1 in one vmapped step from
  the same weights: both losses are the KL on the data seed's mixed view."""
  c, run, tx, state, batch, (teacher, t_vars) = _setup(
      **{"kd.alpha": 1.0, "kd.temperature": 1.0})
  spec = run.spec()
  cells = [c.copy_and_resolve_references() for _ in range(2)]
  cells[1].seed = 5
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), state, state)
  _, m = jax.jit(jax.vmap(step.make_train_step(spec, tx),
                          in_axes=(0, None, 0, None)))(
      stacked, batch, step.stack_hyperparams(
          [config_lib.read_specs(k) for k in cells]), t_vars)
  x_mixed = _numpy_view(spec, batch["image"], 0)[0]
  lt = _log_softmax(teacher.apply(t_vars, jnp.asarray(x_mixed)))
  ls = _log_softmax(spec.student.apply({"params": state.params["student"]},
                                       jnp.asarray(x_mixed), train=True))
  want = np.mean(np.sum(np.exp(lt) * (lt - ls), -1))
  np.testing.assert_allclose(m["loss"], [want, want], rtol=1e-5)


def test_evaluation_never_mixes():
  _, run, _, _, batch, _ = _setup()
  spec = run.spec()
  images = jnp.asarray(batch["image"])
  np.testing.assert_array_equal(
      spec.preprocess(images),
      data.preprocess(images, image_size=spec.preprocess.image_size,
                      normalization=spec.preprocess.normalization))


# -------------------------------------------- config, cache, sweeps: end to end


@pytest.mark.parametrize("override,match", [
    ({"dataset.mixup_alpha": -1.0}, "mixup_alpha=-1.0 must be >= 0"),
    ({"dataset.mix_ratio": "uniform"}, "unknown config.dataset.mix_ratio"),
    ({"dataset.mix_partner": "flip"}, "unknown config.dataset.mix_partner"),
    ({"dataset.cutmix_alpha": 1.0, "kd.method": "at"},
     "feature method 'at' does not mix"),
])
def test_bad_mixing_settings_are_one_line_errors(override, match):
  c = helpers.tiny_config("dataset=digits", **override)
  with pytest.raises(config_lib.UserError, match=match):
    config_lib.validate(c)


def test_defaults_do_not_mix():
  d = config_lib.data_spec(config_lib.base_config())
  assert not d.mixes and not d.augments
  assert not step.Preprocess.from_spec(d).mix.active


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
  return helpers.train_digits_teacher(tmp_path_factory.mktemp("mix_teacher"))


def _config(teacher_dir, cache_dir, arg=""):
  return helpers.tiny_config(
      "dataset=digits,method=vanilla,T=1,alpha=1" + arg,
      scratch_baseline=False, data_seed=0,
      **{"teacher.checkpoint": teacher_dir, "teacher.name": "simple_cnn",
         "teacher.cache_dir": cache_dir, "dataset.random_flip": True, **FM})


def test_cached_mixed_views_equal_the_live_teacher(teacher_dir, tmp_path):
  cache = str(tmp_path / "cache")
  live = train.train_and_evaluate(_config(teacher_dir, ""), str(tmp_path / "l"))
  views = train.train_and_evaluate(_config(teacher_dir, cache),
                                   str(tmp_path / "v"))
  assert views["rows"] == live["rows"]
  files = sorted(glob.glob(os.path.join(cache, "views-*", "epoch-*.npy")))
  assert [os.path.basename(f) for f in files] == ["epoch-0.npy", "epoch-1.npy"]
  assert not glob.glob(os.path.join(cache, "*", "train.npy"))  # no per-example
  c = _config(teacher_dir, cache)
  specs = config_lib.read_specs(c)
  ds, mesh = data.load(c), sharding.make_mesh()
  teacher = train.load_frozen(specs, ds, mesh, teacher_dir)
  spe = c.max_steps_per_epoch
  spec = step.make_spec(specs, models.get_model("mlp", num_classes=10),
                        "vanilla", steps_per_epoch=spe, teacher=teacher.model)
  cached = np.load(files[1])
  for s, b in enumerate(data.train_batches(
      ds.train, global_batch=c.batch_size, seed=0, epoch=1, num_steps=spe,
      image_size=c.dataset.image_size)):
    x_mixed = _numpy_view(spec, b["image"], spe + s)[0]
    np.testing.assert_allclose(cached[s], teacher.model.apply(
        teacher.variables, jnp.asarray(x_mixed, jnp.float32), train=False),
        rtol=1e-5, atol=1e-5)
  # Another mixing is another key: the unmixed run does not read these.
  unmixed = _config(teacher_dir, cache)
  unmixed.dataset.mixup_alpha = 0.0
  other = teacher_cache.AugmentedViews(config_lib.read_specs(unmixed), ds,
                                       teacher, spec, spe, mesh)
  assert other.root != os.path.dirname(files[0])
  assert teacher_cache.usable(specs) == (
      False, "augmentation changes the teacher's input every epoch")


def test_mixing_alone_turns_the_per_example_cache_off(teacher_dir):
  c = _config(teacher_dir, "/c")
  c.dataset.random_flip = False
  specs = config_lib.read_specs(c)
  assert specs.data.augments and not teacher_cache.usable(specs)[0]
  assert teacher_cache.views_problem(specs) is None


def test_vmapped_mixed_pair_equals_two_separate_runs(teacher_dir, tmp_path):
  configs = [_config(teacher_dir, str(tmp_path / "cache"), a)
             for a in (",seed=0", ",seed=1,T=2,alpha=0.5")]
  separate = [train.train_and_evaluate(c, str(tmp_path / f"sep{i}"))
              for i, c in enumerate(configs)]
  vmapped = sweep.train_group(configs, [str(tmp_path / f"vm{i}")
                                        for i in range(2)], vmap_chunk=2)
  for s, v in zip(separate, vmapped):
    s_res, v_res = s["stages"]["student"], v["stages"]["student"]
    assert v_res["vmapped_with"] == 2
    assert v_res["test"]["accuracy"] == pytest.approx(
        s_res["test"]["accuracy"], abs=1e-9)
  assert len(glob.glob(str(tmp_path / "cache" / "views-*"))) == 1


# ------------------------------------------- the function-matching recipe


def test_function_matching_config_follows_big_visions_flowers_pet():
  for recipe, variant, want in (
      ("flowers", "fast", (10_000, 10.0, 3e-3, 3e-4, 1024)),
      ("flowers", "medium", (100_000, 1.0, 1e-3, 1e-4, 1024)),
      ("pet", "long", (30_000, 2.0, 3e-3, 1e-5, 3072))):
    c = helpers.load_config("function_matching.py",
                            f"recipe={recipe},variant={variant}")
    config_lib.validate(c)
    assert (c.num_epochs, c.kd.temperature, c.learning_rate,
            c.weight_decay * c.learning_rate,
            c.dataset.transfer_limit) == pytest.approx(want)
    assert (c.kd.method, c.kd.alpha, c.batch_size, c.warmup_steps,
            c.grad_clip_norm, c.early_stopping_patience) == (
                "vanilla", 1.0, 512, 1500, 1.0, 0)
    assert (c.dataset.mixup_alpha, c.dataset.mix_ratio,
            c.dataset.mix_partner) == (1.0, "folded", "roll")
    # big_vision's inception_crop(128): area 5-100 %, aspect 3/4-4/3.
    assert (c.dataset.train_transform, c.dataset.rrc_min_scale,
            c.dataset.rrc_max_scale, c.dataset.image_size) == (
                "random_resized_crop", 0.05, 1.0, 128)
  with pytest.raises(config_lib.UserError, match="recipe='cars'"):
    helpers.load_config("function_matching.py", "recipe=cars")


def test_warmup_in_steps_and_gradient_clipping():
  c = config_lib.base_config()
  c.warmup_steps, c.lr_schedule = 10, "constant"
  opt = config_lib.optimizer_spec(c)
  lr = step.lr_schedule(opt, learning_rate=1.0, num_epochs=5, steps_per_epoch=7)
  assert [float(lr(s)) for s in (0, 5, 10, 30)] == pytest.approx(
      [0.0, 0.5, 1.0, 1.0])
  # a stage shorter than twice the warmup warms up over its first half
  short = step.lr_schedule(opt, learning_rate=1.0, num_epochs=1,
                           steps_per_epoch=8)
  assert [float(short(s)) for s in (0, 2, 4, 7)] == pytest.approx(
      [0.0, 0.5, 1.0, 1.0])
  c.warmup_epochs = 1.0
  with pytest.raises(config_lib.UserError, match="are two warmups"):
    config_lib.validate(c)
  # Clipping: SGD's update is -lr * g * min(1, max_norm / ||g||).
  c = config_lib.base_config()
  c.optimizer, c.momentum, c.lr_schedule, c.grad_clip_norm = (
      "sgd", 0.0, "constant", 1.0)
  tx = step.make_optimizer(*config_lib.optimizer_and_kd(c), learning_rate=0.1,
                           num_epochs=1, steps_per_epoch=1, ctkd=False)
  params = {"student": {"a": jnp.zeros(2), "b": jnp.zeros(1)}}
  g = {"student": {"a": jnp.asarray([3.0, 0.0]), "b": jnp.asarray([4.0])}}
  updates, _ = tx.update(g, tx.init(params), params)
  np.testing.assert_allclose(updates["student"]["a"], [-0.1 * 0.6, 0.0],
                             rtol=1e-6)
  np.testing.assert_allclose(updates["student"]["b"], [-0.1 * 0.8], rtol=1e-6)


def test_report_names_the_augmentation_and_compares_augmentations():
  assert report.augmentation_label({"image_size": 28}) == "none"
  assert report.augmentation_label(
      {"random_crop": True, "random_flip": True, "mixup_alpha": 1.0,
       "mix_ratio": "folded", "mix_partner": "roll"}) == (
           "crop+flip+mixup(α=1, folded, roll)")
  assert report.augmentation_label({"cutmix_alpha": 0.5}) == "cutmix(α=0.5)"
  summary = [
      {"setting": name, "student": "mlp", "method": method,
       "augmentation": aug, "val_selected_mean": val,
       "by_seed": {s: acc + 0.01 * s for s in range(3)}}
      for name, method, aug, val, acc in (
          ("scratch", "none", "none", 0.8, 0.80),
          ("kd", "vanilla", "none", 0.85, 0.82),
          ("consistent", "vanilla", "crop+flip", 0.86, 0.83),
          ("fm", "vanilla", "crop+flip+mixup(α=1)", 0.87, 0.85))]
  summary[3]["by_seed"][1] += 0.01  # not a constant difference: a t-test
  comps = report.compare(summary)
  aug = [(c["a"], c["b"]) for c in comps
         if c["kind"] == "augmentation_vs_augmentation"]
  assert aug == [("kd", "consistent"), ("kd", "fm"), ("consistent", "fm")]
  assert [c["a"] for c in comps if c["kind"] == "kd_vs_scratch"] == [
      "kd", "consistent", "fm"]
  assert set(report.best_per_augmentation(summary)) == {
      ("mlp", "none", "none"), ("mlp", "vanilla", "none"),
      ("mlp", "vanilla", "crop+flip"), ("mlp", "vanilla", "crop+flip+mixup(α=1)")}


@pytest.mark.slow  # an end-to-end run; the parts are tested fast
def test_repro_study_mixes_in_its_cells_and_views(tmp_path):
  """configs/repro/function_matching_fashion.py in tiny mode, one seed: the
  shared teacher trains unmixed, the function-matching cell mixes and
  reads the views cache of its own mixing, and the report names each
  setting's augmentation."""
  study_dir = str(tmp_path / "fm")
  s = study.Study(os.path.join(helpers.REPO, "configs", "repro",
                               "function_matching_fashion.py"),
                  "runlocal,dataset=digits,seeds=1", study_dir)
  assert study.run(s, in_process=True) == 0
  teacher = helpers.read_json(os.path.join(study_dir, "teacher", "config.json"))
  assert teacher["dataset"]["mixup_alpha"] == 0.0
  views = glob.glob(os.path.join(study_dir, "teacher_cache", "views-*"))
  assert len(views) == 2  # consistent and function matching: two keys
  out = report.make_report(study_dir, timing=False,
                           profile_fn=lambda *a: {"gflops": 0.1})
  augs = sorted(r["augmentation"] for r in out["rows"])
  assert augs == ["crop+flip", "crop+flip+mixup(α=1, folded, roll)", "none",
                  "none"]
  assert sum(c["kind"] == "augmentation_vs_augmentation"
             for c in out["comparisons"]) == 3
