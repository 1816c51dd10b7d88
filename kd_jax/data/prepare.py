"""Turns raw data into what kd_jax reads.

`python -m kd_jax.prepare frames --videos=DIR --labels=CSV --out=DIR`
decodes every video (AVI, MP4, ...) listed in a labels CSV into an image
folder for `dataset.name='folder'`:

    out/{train,val,test}/<label>/<video>_<frame>.png
    out/manifest.csv   (path, video, group, label, split, frame)

Splits are assigned per group (patient), so frames of one patient never fall
in two splits: taken from a split column (e.g. EchoNet-Dynamic's `Split`) or
drawn with a seed, stratified by the group's label. Every check (CSV, files,
groups, output folder) runs before decoding, and frames are decoded into a
hidden sibling folder that replaces `out` only when all videos decoded, so a
refused or failed run leaves `out` as it was. Bad input exits with status 2
and one line on stderr.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import csv
import dataclasses
import multiprocessing
import os
import shutil
import sys

import numpy as np
from PIL import Image

from kd_jax.errors import UserError

SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val",
                 "valid": "val", "validation": "val", "dev": "val",
                 "test": "test", "testing": "test"}
VIDEO_EXTENSIONS = (".avi", ".mp4", ".mov", ".mkv", ".webm")
MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ("path", "video", "group", "label", "split", "frame")
DEFAULT_GROUP_COLUMN = "patient_id"
# Largest per-pixel channel spread of a frame that still counts as grey: lossy
# codecs store grey content with chroma a few levels off neutral.
GREY_TOLERANCE = 16


@dataclasses.dataclass
class Video:
  name: str  # file name in --videos, e.g. '0X1A05DFFFCAFB253B.avi'
  path: str
  label: str
  group: str
  split: str = ""
  line: int = 0  # of the labels CSV (for messages)

  @property
  def stem(self):
    return os.path.splitext(self.name)[0]


def note(message):
  print(f"kd_jax: {message}", file=sys.stderr)


# ------------------------------------------------------------ labels CSV


def read_labels(path, args):
  """(rows as (line, dict), group column or None) of the labels CSV."""
  if not os.path.isfile(path):
    raise UserError(f"labels CSV {path!r} does not exist")
  # utf-8-sig: spreadsheet exports often start with a byte-order mark.
  with open(path, newline="", encoding="utf-8-sig") as f:
    reader = csv.DictReader(f)
    header = [h.strip() for h in (reader.fieldnames or [])]
    reader.fieldnames = header
    rows = [(reader.line_num, {k: (v or "").strip() for k, v in r.items()
                               if k is not None}) for r in reader]
  if not header:
    raise UserError(f"labels CSV {path!r} is empty")
  have = ", ".join(header)
  for flag in ("file_column", "label_column", "split_column"):
    column = getattr(args, flag)
    if column and column not in header:
      raise UserError(f"--{flag}={column!r} is not a column of {path} "
                      f"(columns: {have})")
  group_column = args.group_column or DEFAULT_GROUP_COLUMN
  if group_column not in header:
    if args.group_column:  # asked for by name: most likely a typo
      raise UserError(f"--group_column={group_column!r} is not a column of "
                      f"{path} (columns: {have})")
    group_column = None
  if not rows:
    raise UserError(f"labels CSV {path!r} has no rows")
  return rows, group_column


def index_videos(videos_dir):
  """{file name: path} of the video files directly in videos_dir."""
  if not os.path.isdir(videos_dir):
    raise UserError(f"videos folder {videos_dir!r} does not exist")
  return {name: os.path.join(videos_dir, name)
          for name in sorted(os.listdir(videos_dir))
          if name.lower().endswith(VIDEO_EXTENSIONS)
          and os.path.isfile(os.path.join(videos_dir, name))}


def find_file(name, files, by_stem):
  """The file a CSV name means: exact with an extension, by stem without
  (EchoNet-Dynamic's FileList.csv names videos without '.avi')."""
  if name in files:
    return [name]
  if name.lower().endswith(VIDEO_EXTENSIONS):
    return []
  return by_stem.get(name, [])


def match_videos(rows, group_column, files, args):
  """One Video per CSV row; raises UserError on empty, missing, ambiguous
  or repeated entries."""
  by_stem = collections.defaultdict(list)
  for name in files:
    by_stem[os.path.splitext(name)[0]].append(name)
  videos, missing, seen = [], [], {}
  for line, row in rows:
    name, label = row[args.file_column], row[args.label_column]
    where = f"line {line} of {args.labels}"
    if not name:
      raise UserError(f"{where}: empty {args.file_column!r}")
    if not label:
      raise UserError(
          f"{where}: empty {args.label_column!r} for video {name!r}")
    if label in (".", "..") or "/" in label or "\\" in label:
      raise UserError(f"{where}: label {label!r} cannot be a folder name")
    group = row[group_column] if group_column else name
    if not group:
      raise UserError(f"{where}: empty {group_column!r} for video {name!r} "
                      "(a video without a patient cannot be kept out of "
                      "other splits)")
    found = find_file(name, files, by_stem)
    if len(found) > 1:
      raise UserError(f"{where}: {name!r} matches {' and '.join(found)}; "
                      "give the extension in the CSV")
    if not found:
      missing.append(name)
      continue
    if found[0] in seen:
      raise UserError(f"{where}: video {found[0]} is listed again (first on "
                      f"line {seen[found[0]]})")
    seen[found[0]] = line
    videos.append(Video(found[0], files[found[0]], label, group,
                        row.get(args.split_column or "", ""), line))
  if missing:
    raise UserError(f"{len(missing)} video(s) listed in {args.labels} are not "
                    f"in {args.videos}: {', '.join(missing[:5])}"
                    + (" ..." if len(missing) > 5 else ""))
  return videos


def check_classes(videos, args):
  """With --classes, a label outside the list is refused (a typo such as
  'A4c' would otherwise be a class of its own)."""
  allowed = [c.strip() for c in args.classes.split(",") if c.strip()]
  for video in videos:
    if video.label not in allowed:
      raise UserError(
          f"line {video.line} of {args.labels}: label {video.label!r} of "
          f"video {video.name!r} is not one of --classes={','.join(allowed)}")


def check_every_class_in_every_split(videos, args):
  """A class must have a group in each split that has videos: one with no
  val or test patient (a label typo, most often) cannot be selected on or
  evaluated."""
  used = [s for s in SPLITS if any(v.split == s for v in videos)]
  for label in sorted({v.label for v in videos}):
    mine = [v for v in videos if v.label == label]
    for split in used:
      if not any(v.split == split for v in mine):
        groups = sorted({v.group for v in mine})
        raise UserError(
            f"class {label!r} ({len(groups)} patient(s), first on line "
            f"{mine[0].line} of {args.labels}) has no patient in the {split} "
            "split: fix its label, or name the classes with --classes")


def check_unique_stems(videos):
  """Frame files are named by the video's stem, so stems must not repeat."""
  first = {}
  for v in videos:
    if v.stem in first:
      raise UserError(f"videos {first[v.stem]} and {v.name} would both write "
                      f"frames {v.stem}_*.png; rename one")
    first[v.stem] = v.name


# ------------------------------------------------------------------ splits


def splits_from_column(videos, args):
  """Honours the split column; one group in two splits is refused."""
  first = {}
  for v in videos:
    split = SPLIT_ALIASES.get(v.split.lower())
    if split is None:
      raise UserError(
          f"line {v.line} of {args.labels}: {args.split_column!r} is "
          f"{v.split!r}; expected one of train/val/test (any case)")
    v.split = split
    other = first.setdefault(v.group, v)
    if other.split != split:
      raise UserError(
          f"group {v.group!r} would land in two splits: {other.split} "
          f"({other.name}) and {split} ({v.name}); give all videos of a "
          "group one split")


def split_counts(n, val_fraction, test_fraction):
  """(val, test) group counts for a class with n groups."""
  n_val = int(n * val_fraction + 0.5)
  n_test = int(n * test_fraction + 0.5)
  if n >= 3:  # enough groups for the class to appear in every split
    n_val = max(n_val, 1) if val_fraction > 0 else 0
    n_test = max(n_test, 1) if test_fraction > 0 else 0
  while n_val + n_test > max(n - 1, 0):  # train keeps at least one group
    if n_val >= n_test:
      n_val -= 1
    else:
      n_test -= 1
  return n_val, n_test


def seeded_splits(videos, args):
  """Assigns whole groups to splits at random (seeded), stratified by the
  group's most common label."""
  labels = collections.defaultdict(collections.Counter)
  for v in videos:
    labels[v.group][v.label] += 1
  by_class = collections.defaultdict(list)
  for group in sorted(labels):
    # Most common label; ties go to the first name, for determinism.
    top = min(labels[group].items(), key=lambda kv: (-kv[1], kv[0]))[0]
    by_class[top].append(group)
  rng = np.random.default_rng(args.seed)
  split_of = {}
  for label in sorted(by_class):
    groups = by_class[label]
    n_val, n_test = split_counts(len(groups), args.val_fraction,
                                 args.test_fraction)
    for rank, i in enumerate(rng.permutation(len(groups))):
      split_of[groups[i]] = ("test" if rank < n_test else
                             "val" if rank < n_test + n_val else "train")
  for v in videos:
    v.split = split_of[v.group]


# --------------------------------------------------------------- decoding


def check_out_dir(out, overwrite):
  if not os.path.exists(out):
    return
  if not os.path.isdir(out):
    raise UserError(f"--out={out} exists and is not a folder")
  if not os.listdir(out):
    return
  if not overwrite:
    raise UserError(f"output folder {out} is not empty; pass --overwrite to "
                    "replace it")
  if not os.path.isfile(os.path.join(out, MANIFEST)):
    # --overwrite deletes the folder: only one this command wrote.
    raise UserError(f"output folder {out} is not empty and has no {MANIFEST} "
                    "of an earlier `prepare frames`; refusing to replace it "
                    "even with --overwrite")


def video_problem(path, shown):
  """Why FFmpeg cannot read `path` as a video, as a message naming it
  `shown`, or None when it opens with a video stream (reads the header
  only, so it is cheap)."""
  import av
  try:
    with av.open(path) as container:
      if container.streams.video:
        return None
  except (av.FFmpegError, OSError, ValueError) as e:
    return f"cannot read video {shown} ({type(e).__name__}: {str(e).strip()})"
  return f"cannot read video {shown}: it has no video stream"


def probe(video):
  """Refuses a file FFmpeg cannot open or that has no video stream."""
  problem = video_problem(video.path, video.path)
  if problem:
    raise UserError(problem)


def is_grey(rgb):
  # Ultrasound is grey, but is often stored as RGB (or YUV that decodes to
  # RGB): equal channels, within codec noise, mean a grey video.
  spread = rgb.max(axis=-1).astype(np.int16) - rgb.min(axis=-1)
  return int(spread.max()) <= GREY_TOLERANCE


def resize(rgb, size):
  if not size or rgb.shape[:2] == (size, size):
    return rgb
  return np.asarray(Image.fromarray(rgb).resize(
      (size, size), Image.Resampling.BILINEAR))


def decode(path, every, max_frames, size):
  """([(frame index, uint8 HxW or HxWx3)], grey, (decoded, declared)) of
  one video's kept frames; `declared` is the frame count its header states
  (0: none), `decoded` how many frames decoding reached. A video is grey
  only if all its frames are, so its kept frames are held until the end;
  they are stored HxW while every frame so far is grey."""
  import av
  kept, grey, decoded = [], True, 0
  with av.open(path) as container:
    stream = container.streams.video[0]
    declared = int(stream.frames or 0)
    stream.thread_type = "AUTO"  # frame-threaded decoding; order is kept
    try:
      for i, frame in enumerate(container.decode(stream)):
        decoded = i + 1
        if i % every:
          continue
        rgb = resize(frame.to_ndarray(format="rgb24"), size)
        if grey and not is_grey(rgb):
          grey = False
          kept = [(j, np.repeat(g[..., None], 3, axis=-1)) for j, g in kept]
        kept.append((i, np.round(rgb.mean(-1)).astype(np.uint8) if grey
                     else rgb))
        if max_frames and len(kept) >= max_frames:
          declared = 0  # stopped on purpose: the count says nothing
          break
    except av.FFmpegError:
      if not kept:
        raise
      # A truncated file: its frames up to the damage are kept (and said).
      declared = max(declared, decoded + 1)
  return kept, grey, (decoded, declared)


def extract(job):
  """Decodes one video into stage/<split>/<label>/; returns manifest rows.
  (Top level so worker processes can run it.)"""
  import av
  video, stage, every, max_frames, size = job
  try:
    kept, _, (decoded, declared) = decode(video.path, every, max_frames, size)
  except (av.FFmpegError, OSError, ValueError) as e:
    raise UserError(f"cannot decode video {video.path} ({type(e).__name__}: "
                    f"{e})") from None
  if not kept:
    raise UserError(f"cannot decode video {video.path}: no frames")
  rows = []
  for i, pixels in kept:
    rel = f"{video.split}/{video.label}/{video.stem}_{i:04d}.png"
    Image.fromarray(pixels).save(os.path.join(stage, rel))
    rows.append((rel, video.name, video.group, video.label, video.split, i))
  warning = (f"warning: video {video.path} decoded to {decoded} of the "
             f"{declared} frames its header declares (truncated?); kept "
             f"{len(kept)}" if declared and decoded < declared else None)
  return rows, warning


def extract_all(videos, stage, args):
  jobs = [(v, stage, args.every, args.max_frames, args.size) for v in videos]
  # 'spawn': forking a process that has loaded JAX (a notebook, the tests)
  # can deadlock in JAX's threads.
  pool = (concurrent.futures.ProcessPoolExecutor(
      args.workers, mp_context=multiprocessing.get_context("spawn"))
          if args.workers > 1 else None)
  try:
    results = (pool.map(extract, jobs, chunksize=4) if pool
               else map(extract, jobs))
    rows = []
    for done, (video_rows, warning) in enumerate(results, 1):
      rows.extend(video_rows)
      if warning:
        note(warning)
      if done % 500 == 0:
        note(f"decoded {done}/{len(jobs)} videos")
  finally:
    if pool:
      pool.shutdown(cancel_futures=True)
  return rows


# ----------------------------------------------------------------- output


def write_manifest(folder, rows):
  """Writes folder/manifest.csv via a temporary file and a rename, so a
  reader never sees half of it."""
  path = os.path.join(folder, MANIFEST)
  with open(path + ".tmp", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(MANIFEST_COLUMNS)
    writer.writerows(sorted(rows, key=lambda r: (SPLITS.index(r[4]), r[0])))
  os.replace(path + ".tmp", path)


def swap_in(stage, out, old):
  """Replaces out by the finished stage folder. Both share a parent, so
  these are renames: out is never half old, half new."""
  if os.path.isdir(out) and os.listdir(out):  # checked: an earlier output
    os.rename(out, old)
  elif os.path.isdir(out):
    os.rmdir(out)
  os.rename(stage, out)
  if os.path.isdir(old):
    shutil.rmtree(old)


def summarize(videos, rows):
  frames = collections.Counter(r[4] for r in rows)
  per_class = collections.Counter((r[4], r[3]) for r in rows)
  labels = sorted({v.label for v in videos})
  for split in SPLITS:
    in_split = [v for v in videos if v.split == split]
    classes = ", ".join(f"{c} {per_class[split, c]}" for c in labels)
    print(f"{split}: {len(in_split)} videos, "
          f"{len({v.group for v in in_split})} groups, {frames[split]} frames "
          f"({classes})")


# ---------------------------------------------------------------- command


def check_args(args):
  if args.every < 1:
    raise UserError(f"--every must be >= 1 (got {args.every})")
  if args.size < 0:
    raise UserError(f"--size must be >= 0 (0 keeps the size; got {args.size})")
  if args.max_frames is not None and args.max_frames < 1:
    raise UserError(f"--max_frames must be >= 1 (got {args.max_frames})")
  if args.workers < 1:
    raise UserError(f"--workers must be >= 1 (got {args.workers})")
  fractions = (args.val_fraction, args.test_fraction)
  if min(fractions) < 0 or sum(fractions) >= 1:
    raise UserError("--val_fraction and --test_fraction must be >= 0 and sum "
                    f"to less than 1 (got {fractions[0]} and {fractions[1]})")


def frames(args):
  """The `frames` subcommand: videos + labels CSV -> image folder."""
  check_args(args)
  rows, group_column = read_labels(args.labels, args)
  files = index_videos(args.videos)
  videos = match_videos(rows, group_column, files, args)
  check_unique_stems(videos)
  if args.classes:
    check_classes(videos, args)
  if args.split_column:
    splits_from_column(videos, args)
  else:
    seeded_splits(videos, args)
  check_every_class_in_every_split(videos, args)
  out = os.path.abspath(args.out)
  check_out_dir(out, args.overwrite)
  for video in videos:
    probe(video)
  # Notes only now, so that a refusal is the only line printed.
  if not group_column:
    note(f"note: {args.labels} has no {DEFAULT_GROUP_COLUMN!r} column; each "
         "video is its own group (give --group_column if several videos "
         "share a patient)")
  if len(files) > len(videos):
    note(f"note: ignored {len(files) - len(videos)} video file(s) in "
         f"{args.videos} that {args.labels} does not list")
  parent, base = os.path.split(out)
  stage = os.path.join(parent, f".{base}.partial-{os.getpid()}")
  old = os.path.join(parent, f".{base}.old-{os.getpid()}")
  os.makedirs(parent, exist_ok=True)
  shutil.rmtree(stage, ignore_errors=True)
  try:
    make_folders(stage, videos)
    manifest_rows = extract_all(videos, stage, args)
    write_manifest(stage, manifest_rows)
    swap_in(stage, out, old)
  finally:
    shutil.rmtree(stage, ignore_errors=True)
  summarize(videos, manifest_rows)
  print(f"wrote {len(manifest_rows)} frames of {len(videos)} videos and "
        f"{os.path.join(args.out, MANIFEST)}")


def make_folders(stage, videos):
  """Every class folder in every split that has videos: kd_jax's folder
  loader wants the same classes in each split, even where one is empty."""
  labels = sorted({v.label for v in videos})
  for split in SPLITS:
    if not any(v.split == split for v in videos):
      note(f"warning: no video falls in the {split} split; writing no "
           f"{split}/ folder")
      continue
    for label in labels:
      os.makedirs(os.path.join(stage, split, label))


class Parser(argparse.ArgumentParser):
  """argparse, but a bad command line is one line and exit status 2."""

  def error(self, message):
    print(f"kd_jax: error: {message} (see {self.prog} --help)",
          file=sys.stderr)
    sys.exit(2)


def build_parser():
  parser = Parser(prog="python -m kd_jax.prepare", description=__doc__,
                  formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("frames", help="videos + labels CSV -> image folder")
  p.add_argument("--videos", required=True, metavar="DIR",
                 help="folder of video files")
  p.add_argument("--labels", required=True, metavar="CSV", help="labels CSV")
  p.add_argument("--out", required=True, metavar="DIR",
                 help="output image folder")
  p.add_argument("--every", type=int, default=1, metavar="K",
                 help="keep every k-th frame")
  p.add_argument("--size", type=int, default=112, metavar="S",
                 help="resize frames to SxS (0 keeps the size)")
  p.add_argument("--max_frames", type=int, default=None, metavar="N",
                 help="keep at most this many frames per video")
  p.add_argument("--file_column", default="FileName",
                 help="video file name, with or without extension")
  p.add_argument("--label_column", default="label")
  p.add_argument("--classes", default="", metavar="A,B,...",
                 help="the allowed labels (e.g. A2C,A4C,PLAX,PSAX); any "
                 "other label is refused")
  p.add_argument("--group_column", default=None,
                 help=f"patient or other group (default "
                      f"{DEFAULT_GROUP_COLUMN!r}; without it each video is "
                      "its own group)")
  p.add_argument("--split_column", default=None,
                 help="train/val/test per row (any case); else seeded splits")
  p.add_argument("--val_fraction", type=float, default=0.15)
  p.add_argument("--test_fraction", type=float, default=0.15)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--workers", type=int, default=1, metavar="N",
                 help="decode this many videos in parallel processes")
  p.add_argument("--overwrite", action="store_true",
                 help="replace an earlier output of this command")
  p.set_defaults(run=frames)
  return parser


def main(argv=None):
  args = build_parser().parse_args(argv)
  try:
    args.run(args)
  except UserError as e:
    print(f"kd_jax: error: {e}", file=sys.stderr)
    return 2
  return 0

