"""Reading PyTorch checkpoints and safetensors files into NumPy, without PyTorch and without
running pickled code.

``load_state_dict(path) -> {name: np.ndarray}`` reads, by content (not by file name):

* **torch zip** (``torch.save``'s format since PyTorch 1.6): a zip archive ``<prefix>/data.pkl`` (a
  pickle of the object) + ``<prefix>/data/<key>`` (one raw little-endian buffer per storage) +
  ``<prefix>/byteorder``;
* **legacy torch** (``torch.save(..., _use_new_zipfile_serialization=False)`` and files saved before
  PyTorch 1.6, e.g. older torchvision downloads): pickled magic number, protocol version and system
  info, the object's pickle, the pickled list of storage keys, then each storage as an int64 element
  count followed by its raw bytes;
* **safetensors**: an 8-byte little-endian header length, a JSON header
  ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`` and one byte
  buffer (parsed here; the ``safetensors`` package is not needed);
* **npz** (``np.savez``), read with ``allow_pickle=False``.

Safety. A torch pickle is read by a restricted unpickler that resolves only the globals a state
dict needs: ``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2`` (and the pre-1.0
``_rebuild_tensor``), ``torch._utils._rebuild_parameter`` and the typed storage classes
(``torch.FloatStorage``, ``torch.HalfStorage``, ``torch.BFloat16Storage``, ``torch.LongStorage``,
...), each mapped to a local stand-in (nothing is imported from ``torch``). Any other global (e.g.
``os.system``, ``builtins.eval``, ``argparse.Namespace``) raises ``UnsafeCheckpointError`` before
anything is called, so no code from the file runs. Storages are read as NumPy buffers and every
tensor's offset, sizes and strides are checked to lie inside its storage before a strided view is
taken. Safetensors offsets are checked against the buffer the same way.

A checkpoint that wraps the state dict (``{"model": state_dict, "optimizer": ...}``) is read whole;
pick the entry with ``load_state_dict(path, key="model")``. Tensors come back as C-contiguous
NumPy arrays in their stored dtype (bfloat16 as ``ml_dtypes.bfloat16``), in PyTorch's layout
(NCHW activations, OIHW kernels): ``jaxvision.weights.torchvision`` converts them.
"""

from __future__ import annotations

import collections
import json
import math
import os
import pickle
import tarfile
import zipfile
from typing import Any, BinaryIO, Mapping

import numpy as np

__all__ = ["load_state_dict", "read_torch", "read_safetensors", "write_safetensors",
           "CheckpointFormatError", "UnsafeCheckpointError"]


class CheckpointFormatError(ValueError):
  """The file is not a readable torch / safetensors / npz checkpoint, or it is inconsistent."""


class UnsafeCheckpointError(CheckpointFormatError):
  """The pickle asks for a global outside the state-dict allowlist (possibly executable code)."""


def _bfloat16():
  import ml_dtypes  # noqa: PLC0415  (a dependency of jax; only needed for bfloat16 files)
  return np.dtype(ml_dtypes.bfloat16)


# torch.<name>Storage -> NumPy dtype (little-endian); bfloat16 resolved lazily.
_STORAGE_DTYPES = {
    "DoubleStorage": "<f8", "FloatStorage": "<f4", "HalfStorage": "<f2",
    "BFloat16Storage": "bfloat16", "LongStorage": "<i8", "IntStorage": "<i4",
    "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?",
}

# safetensors dtype tag -> NumPy dtype
_SAFETENSORS_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "bfloat16", "I64": "<i8", "I32": "<i4",
    "I16": "<i2", "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}

_TORCH_MAGIC = 0x1950a86a20f9469cfc6c  # torch.serialization.MAGIC_NUMBER (legacy format)
_TORCH_LEGACY_PROTOCOL = 1001
_MAX_SAFETENSORS_HEADER = 100 * 2**20


def _np_dtype(tag: str) -> np.dtype:
  return _bfloat16() if tag == "bfloat16" else np.dtype(tag)


# ------------------------------------------------------------------------------------------------
# Stand-ins for the torch objects a state-dict pickle refers to
# ------------------------------------------------------------------------------------------------


class _Sealed:
  """Stand-ins refuse pickle's BUILD (which could otherwise overwrite their attributes)."""
  __slots__ = ()

  def __setstate__(self, state):
    raise UnsafeCheckpointError(f"the pickle tries to set the state of {type(self).__name__[1:]}.")


class _StorageType(_Sealed):
  """Stand-in for ``torch.<X>Storage`` (only its element type matters)."""
  __slots__ = ("name", "dtype")

  def __init__(self, name: str):
    self.name = name
    self.dtype = _np_dtype(_STORAGE_DTYPES[name])

  def __repr__(self):
    return f"torch.{self.name}"


class _Storage(_Sealed):
  """One storage of the checkpoint: ``numel`` elements of ``dtype``; ``data`` filled when read."""
  __slots__ = ("key", "dtype", "numel", "data", "view_of")

  def __init__(self, key: str, dtype: np.dtype, numel: int):
    self.key, self.dtype, self.numel = key, dtype, numel
    self.data = None  # np.ndarray (numel,) once read
    self.view_of = None  # legacy storage views: (root storage, element offset)

  def array(self) -> np.ndarray:
    if self.view_of is not None:
      root, offset = self.view_of
      return root.array()[offset:offset + self.numel]
    if self.data is None:
      raise CheckpointFormatError(f"storage {self.key!r} is referenced but its data was never read.")
    return self.data


class _Tensor(_Sealed):
  """A tensor of the pickle, materialized (``resolve``) once its storage's bytes are read."""
  __slots__ = ("storage", "offset", "size", "stride")

  def __init__(self, storage, offset, size, stride):
    if not isinstance(storage, _Storage):
      raise CheckpointFormatError(f"a tensor's storage must be a persistent storage, got {storage!r}.")
    ints = lambda v: isinstance(v, tuple) and all(isinstance(i, int) for i in v)  # noqa: E731
    if not isinstance(offset, int) or not ints(size) or not ints(stride) or len(size) != len(stride):
      raise CheckpointFormatError(f"bad tensor metadata: offset {offset!r}, size {size!r}, "
                                  f"stride {stride!r}.")
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

  def resolve(self) -> np.ndarray:
    data = self.storage.array()  # (numel,)
    size, stride, offset = self.size, self.stride, self.offset
    if offset < 0 or any(s < 0 for s in size) or any(s < 0 for s in stride):
      raise CheckpointFormatError(f"storage {self.storage.key!r}: negative offset/size/stride "
                                  f"({offset}, {size}, {stride}).")
    if math.prod(size) == 0:
      return np.zeros(size, data.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= data.shape[0]:
      raise CheckpointFormatError(
          f"storage {self.storage.key!r}: a tensor of size {size}, stride {stride} at offset "
          f"{offset} reaches element {last}, but the storage has {data.shape[0]} elements.")
    item = data.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(data[offset:], shape=size,
                                           strides=tuple(s * item for s in stride), writeable=False)
    return np.array(view, order="C")  # a copy: independent of the storage buffer


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  del requires_grad, backward_hooks, metadata
  return _Tensor(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
  return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
  del requires_grad, backward_hooks, state
  if not isinstance(data, _Tensor):
    raise CheckpointFormatError(f"_rebuild_parameter expects a tensor, got {type(data).__name__}.")
  return data


class _Function(_Sealed):
  """An allowed function, wrapped so that the pickle cannot change it (defaults, attributes)."""
  __slots__ = ("_fn",)

  def __init__(self, fn):
    self._fn = fn

  def __call__(self, *args):
    return self._fn(*args)


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): lambda: collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): lambda: _Function(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_tensor"): lambda: _Function(_rebuild_tensor),
    ("torch._utils", "_rebuild_parameter"): lambda: _Function(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): lambda: _Function(_rebuild_parameter),
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only ``_ALLOWED_GLOBALS`` and storage types; storages through ``storage_for``."""

  def __init__(self, file: BinaryIO, storage_for=None):
    super().__init__(file, encoding="utf-8")
    self._storage_for = storage_for

  def find_class(self, module, name):
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    if (module, name) in _ALLOWED_GLOBALS:
      return _ALLOWED_GLOBALS[(module, name)]()
    raise UnsafeCheckpointError(
        f"refusing to load the global {module}.{name} from the checkpoint's pickle: only tensors, "
        "typed storages and OrderedDict are allowed (loading it could run code from the file). "
        "If the file is trusted, re-save its state dict with `torch.save(model.state_dict(), ...)` "
        "or as safetensors.")

  def persistent_load(self, pid):
    if self._storage_for is None:
      raise UnsafeCheckpointError(f"unexpected persistent id {pid!r} in this part of the file.")
    if not isinstance(pid, tuple) or not pid or pid[0] not in ("storage", b"storage"):
      raise UnsafeCheckpointError(f"unsupported persistent id {pid!r} (only 'storage').")
    return self._storage_for(pid[1:])


def _check_storage_pid(args) -> tuple[_StorageType, str, int]:
  if len(args) < 4 or not isinstance(args[0], _StorageType):
    raise CheckpointFormatError(f"bad storage record {args!r}: expected "
                                "(storage type, key, location, numel[, view]).")
  storage_type, key, _, numel = args[:4]
  if isinstance(key, bytes):
    key = key.decode()
  if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
    raise CheckpointFormatError(f"bad storage record {args!r}.")
  return storage_type, key, numel


def _resolve(obj):
  """Replaces every ``_Tensor`` in nested dicts / lists / tuples by its NumPy array."""
  if isinstance(obj, _Tensor):
    return obj.resolve()
  if isinstance(obj, collections.OrderedDict):
    return collections.OrderedDict((k, _resolve(v)) for k, v in obj.items())
  if isinstance(obj, dict):
    return {k: _resolve(v) for k, v in obj.items()}
  if isinstance(obj, list):
    return [_resolve(v) for v in obj]
  if isinstance(obj, tuple):
    return tuple(_resolve(v) for v in obj)
  return obj


def _big_endian(dtype: np.dtype) -> np.dtype:
  return dtype.newbyteorder(">") if dtype.itemsize > 1 and dtype.kind in "fiu" else dtype


# ------------------------------------------------------------------------------------------------
# torch zip and legacy formats
# ------------------------------------------------------------------------------------------------


def _read_torch_zip(path: str):
  with zipfile.ZipFile(path) as zf:
    names = set(zf.namelist())
    pkls = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
    if len(pkls) != 1:
      raise CheckpointFormatError(f"{path}: a torch zip checkpoint has exactly one '<prefix>/data.pkl'"
                                  f" record, found {sorted(pkls)}.")
    prefix = pkls[0][:-len("data.pkl")]
    byteorder = "little"
    if prefix + "byteorder" in names:
      byteorder = zf.read(prefix + "byteorder").decode().strip()
      if byteorder not in ("little", "big"):
        raise CheckpointFormatError(f"{path}: unknown byteorder record {byteorder!r}.")
    storages: dict[str, _Storage] = {}

    def storage_for(args):
      storage_type, key, numel = _check_storage_pid(args)
      if key in storages:
        return storages[key]
      record = f"{prefix}data/{key}"
      if record not in names:
        raise CheckpointFormatError(f"{path}: storage record {record!r} is missing.")
      raw = zf.read(record)
      dtype = storage_type.dtype
      if byteorder == "big":
        dtype = _big_endian(dtype)
      if len(raw) < numel * dtype.itemsize:
        raise CheckpointFormatError(f"{path}: storage {key!r} has {len(raw)} bytes, expected "
                                    f"{numel} x {dtype.itemsize}.")
      storage = _Storage(key, storage_type.dtype, numel)
      storage.data = np.frombuffer(raw, dtype, count=numel).astype(storage_type.dtype, copy=False)
      storages[key] = storage
      return storage

    with zf.open(pkls[0]) as f:
      obj = _RestrictedUnpickler(f, storage_for).load()
  return _resolve(obj)


def _read_torch_legacy(path: str):
  with open(path, "rb") as f:
    header = lambda: _RestrictedUnpickler(f).load()  # noqa: E731  (no globals, no storages)
    try:
      magic = header()
    except UnsafeCheckpointError:
      raise
    except Exception as e:  # noqa: BLE001  (any unpickling failure means: not this format)
      raise CheckpointFormatError(f"{path}: not a torch checkpoint ({type(e).__name__}: {e}).") from e
    if magic != _TORCH_MAGIC:
      raise CheckpointFormatError(f"{path}: not a torch checkpoint (bad magic number).")
    protocol = header()
    if protocol != _TORCH_LEGACY_PROTOCOL:
      raise CheckpointFormatError(f"{path}: unsupported legacy torch protocol {protocol!r}.")
    sys_info = header()
    little = bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True
    storages: dict[str, _Storage] = {}

    def storage_for(args):
      storage_type, key, numel = _check_storage_pid(args)
      root = storages.get(key)
      if root is None:
        root = storages[key] = _Storage(key, storage_type.dtype, numel)
      view = args[4] if len(args) > 4 else None
      if view is None:
        return root
      view_key, offset, view_size = view  # very old files: (key, element offset, elements)
      if not (isinstance(offset, int) and isinstance(view_size, int) and offset >= 0
              and view_size >= 0 and offset + view_size <= root.numel):
        raise CheckpointFormatError(f"{path}: bad storage view {view!r} of {key!r}.")
      v = _Storage(str(view_key), root.dtype, view_size)
      v.view_of = (root, offset)
      return v

    obj = _RestrictedUnpickler(f, storage_for).load()
    keys = header()
    if not isinstance(keys, list):
      raise CheckpointFormatError(f"{path}: expected the list of storage keys, got {type(keys)}.")
    for key in keys:
      key = key.decode() if isinstance(key, bytes) else str(key)
      if key not in storages:
        raise CheckpointFormatError(f"{path}: data for unknown storage {key!r}.")
      storage = storages[key]
      head = f.read(8)
      if len(head) != 8:
        raise CheckpointFormatError(f"{path}: the file ends inside storage {key!r}.")
      count = np.frombuffer(head, "<i8" if little else ">i8")
      if int(count[0]) != storage.numel:
        raise CheckpointFormatError(f"{path}: storage {key!r} should hold {storage.numel} elements, "
                                    f"the file says {count.tolist()}.")
      dtype = storage.dtype if little else _big_endian(storage.dtype)
      raw = f.read(storage.numel * dtype.itemsize)
      if len(raw) != storage.numel * dtype.itemsize:
        raise CheckpointFormatError(f"{path}: the file ends inside storage {key!r}.")
      storage.data = np.frombuffer(raw, dtype).astype(storage.dtype, copy=False)
  return _resolve(obj)


_MALFORMED = (pickle.UnpicklingError, EOFError, TypeError, AttributeError, ValueError, KeyError,
              IndexError, UnicodeDecodeError, zipfile.BadZipFile, OverflowError)


def read_torch(path: str | os.PathLike) -> Any:
  """The object ``torch.save`` wrote to ``path`` (zip or legacy format), tensors as NumPy arrays.

  Only state-dict-like contents are accepted (nested dicts/lists of tensors, numbers, strings);
  see the module docstring.

  Raises:
    UnsafeCheckpointError: the pickle refers to any other global.
    CheckpointFormatError: not a torch checkpoint, or inconsistent (truncated storages, tensors
      outside their storage).
  """
  path = os.fspath(path)
  try:
    if zipfile.is_zipfile(path):
      return _read_torch_zip(path)
    if tarfile.is_tarfile(path):
      raise CheckpointFormatError(f"{path}: the tar checkpoint format of PyTorch < 0.4 is not "
                                  "supported; re-save it with a recent PyTorch.")
    return _read_torch_legacy(path)
  except CheckpointFormatError:
    raise
  except _MALFORMED as e:
    raise CheckpointFormatError(f"{path}: malformed torch checkpoint ({type(e).__name__}: {e}).") from e


# ------------------------------------------------------------------------------------------------
# safetensors
# ------------------------------------------------------------------------------------------------


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The tensors of a safetensors file, by name (``__metadata__`` is dropped).

  Raises:
    CheckpointFormatError: a malformed header, an unknown dtype, or offsets outside the buffer or
      inconsistent with the shape.
  """
  path = os.fspath(path)
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    head = f.read(8)
    if len(head) != 8:
      raise CheckpointFormatError(f"{path}: too short for a safetensors file.")
    n = int.from_bytes(head, "little")
    if n > min(_MAX_SAFETENSORS_HEADER, size - 8):
      raise CheckpointFormatError(f"{path}: safetensors header length {n} is larger than the file.")
    try:
      header = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise CheckpointFormatError(f"{path}: the safetensors header is not JSON ({e}).") from e
  if not isinstance(header, dict):
    raise CheckpointFormatError(f"{path}: the safetensors header must be a JSON object.")
  buffer = np.memmap(path, np.uint8, mode="r", offset=8 + n) if size > 8 + n else np.zeros(0, np.uint8)
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    try:
      tag, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
    except (TypeError, KeyError, ValueError) as e:
      raise CheckpointFormatError(f"{path}: bad safetensors entry {name!r}: {info!r}.") from e
    if tag not in _SAFETENSORS_DTYPES:
      raise CheckpointFormatError(f"{path}: tensor {name!r} has unsupported dtype {tag!r}; known: "
                                  f"{sorted(_SAFETENSORS_DTYPES)}.")
    if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)):
      raise CheckpointFormatError(f"{path}: tensor {name!r} has a bad shape {shape!r}.")
    dtype = _np_dtype(_SAFETENSORS_DTYPES[tag])
    nbytes = math.prod(shape) * dtype.itemsize
    if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end <= buffer.shape[0]
            and end - begin == nbytes):
      raise CheckpointFormatError(
          f"{path}: tensor {name!r} ({tag}, shape {shape}) needs {nbytes} bytes, but its offsets "
          f"are [{begin}, {end}] in a buffer of {buffer.shape[0]} bytes.")
    raw = np.array(buffer[begin:end])  # copy: the memmap is released below
    le = dtype if dtype.itemsize == 1 or dtype.kind not in "fiu" else dtype.newbyteorder("<")
    out[name] = raw.view(le).astype(dtype, copy=False).reshape(shape)
  del buffer
  return out


def write_safetensors(path: str | os.PathLike, arrays: Mapping[str, Any],
                      metadata: Mapping[str, str] | None = None) -> None:
  """Writes ``arrays`` (name -> array, any NumPy-convertible) as a safetensors file."""
  names = {np.dtype(v).name: k for k, v in _SAFETENSORS_DTYPES.items() if v != "bfloat16"}
  names["bfloat16"] = "BF16"
  header: dict[str, Any] = {}
  if metadata:
    header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
  blobs, offset = [], 0
  for name in sorted(arrays):
    a = np.ascontiguousarray(np.asarray(arrays[name]))
    if a.dtype.name not in names:
      raise ValueError(f"write_safetensors: array {name!r} has unsupported dtype {a.dtype}.")
    if a.dtype.byteorder == ">":
      a = a.astype(a.dtype.newbyteorder("<"))
    blob = a.tobytes()
    header[name] = {"dtype": names[a.dtype.name], "shape": list(a.shape),
                    "data_offsets": [offset, offset + len(blob)]}
    blobs.append(blob)
    offset += len(blob)
  text = json.dumps(header, separators=(",", ":")).encode()
  text += b" " * (-len(text) % 8)
  with open(path, "wb") as f:
    f.write(len(text).to_bytes(8, "little"))
    f.write(text)
    for blob in blobs:
      f.write(blob)


# ------------------------------------------------------------------------------------------------
# One entry point
# ------------------------------------------------------------------------------------------------


def _is_safetensors(path: str) -> bool:
  with open(path, "rb") as f:
    head = f.read(9)
  if len(head) < 9:
    return False
  n = int.from_bytes(head[:8], "little")
  return head[8:9] == b"{" and 2 <= n <= os.path.getsize(path) - 8


def load_state_dict(path: str | os.PathLike, *, key: str | None = None) -> dict[str, np.ndarray]:
  """A flat ``{name: np.ndarray}`` state dict from a torch, safetensors or npz file.

  Args:
    path: the file (format detected from its content).
    key: for checkpoints that wrap the state dict (``{"model": ..., "optimizer": ...}``), the
      entry holding it; None: the file's top-level object must be the state dict.

  Raises:
    FileNotFoundError: ``path`` does not exist.
    UnsafeCheckpointError, CheckpointFormatError: see ``read_torch`` / ``read_safetensors``; also
      when the (selected) object is not a mapping from names to tensors.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"weights file {path!r} does not exist.")
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as zf:
      is_npz = any(n.endswith(".npy") for n in zf.namelist())
    if is_npz:
      with np.load(path, allow_pickle=False) as npz:
        obj = {k: npz[k] for k in npz.files}
    else:
      obj = read_torch(path)
  elif _is_safetensors(path):
    obj = read_safetensors(path)
  else:
    obj = read_torch(path)
  if key is not None:
    if not isinstance(obj, Mapping) or key not in obj:
      found = sorted(map(str, obj)) if isinstance(obj, Mapping) else type(obj).__name__
      raise CheckpointFormatError(f"{path}: no entry {key!r} in the checkpoint (it has {found}).")
    obj = obj[key]
  if not isinstance(obj, Mapping):
    raise CheckpointFormatError(f"{path}: expected a state dict (a mapping of names to tensors), got "
                                f"{type(obj).__name__}.")
  bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, np.ndarray)]
  if bad:
    entries = sorted(map(str, obj))[:10]
    raise CheckpointFormatError(
        f"{path}: not a flat state dict: entries {bad[:10]} are not tensors. If the state dict is "
        f"nested in the checkpoint, pass key=... (top-level entries: {entries}).")
  return dict(obj)
