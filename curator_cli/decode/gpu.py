"""``--decode gpu``: batched JPEG decoding on the GPU with nvJPEG (``torchvision.io.decode_jpeg``),
resized on the GPU; anything that is not a JPEG, that nvJPEG rejects, or whose EXIF says it is
rotated or mirrored (torchvision's CUDA decoder ignores EXIF orientation), is decoded on the CPU.

Decoding runs in a thread of its own (``submit`` returns at once), so the feeder reads the next
batch while this one decodes and the stages run the one before: reading, nvJPEG and the model
overlap. Decoding and resizing run on a CUDA stream of their own, synchronised before the pixels
are handed over, and the consumer marks the squares as used on its stream (``pixel_tensor``):
nvJPEG writes from a private stream, so memory the model's stream may still read must not be
handed to it.
"""

from __future__ import annotations

import contextlib
import io
import queue
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from PIL import Image

from curator_cli.decode.pillow import DecodeOptions
from curator_cli.decode.jobs import DecodeFailure, DecodeJob, Decoder, decode_one
from curator_cli.io.readers.base import ByteRange, OpenFiles
from curator_cli.stages.preprocess import stacked_by_shape

JPEG_MAGIC = b"\xff\xd8\xff"
RESIZE_GROUP = 32  # decoded images of one shape resized per call (bounds the extra GPU memory)
BITSTREAMS_KEEP = 256 << 20  # bytes of encoded images the decode thread's buffer keeps at most between jobs


class GpuDecodeUnavailable(RuntimeError):
    """``--decode gpu`` on a machine without CUDA."""


EXIF_ORIENTATION = 0x0112


def _jpeg_header(data: bytes | memoryview) -> tuple[int, int, int] | None:
    """(width, height, EXIF orientation) from a JPEG's header, None when it cannot be parsed.

    The markers before the scan are walked here (a few microseconds: Pillow's ``open`` + ``getexif``
    took ~70 us per image in the thread that feeds the GPU); Pillow reads the orientation only when
    the file has an EXIF or XMP segment."""
    size = None
    exif = False
    at, end = 2, min(len(data), 1 << 20)
    while at + 4 <= end:
        fill, marker, length = _MARKER.unpack_from(data, at)
        if fill != 0xFF:
            return None
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in _NO_LENGTH:
            at += 2
            continue
        if length < 2:
            return None
        if marker == 0xE1 and (data[at + 4:at + 10] == b"Exif\0\0" or data[at + 4:at + 33] == _XMP):
            exif = True  # an orientation may be there (Pillow also reads XMP's tiff:Orientation)
        elif marker in _SOF_MARKERS and at + 9 <= end:
            height, width = _SIZE.unpack_from(data, at + 5)
            size = (width, height)
        elif marker == 0xDA:  # start of scan: the header is over
            break
        at += 2 + length
    if size is None or 0 in size:
        return None
    if not exif:
        return (*size, 1)
    try:
        with Image.open(io.BytesIO(data)) as image:
            return (*size, int(image.getexif().get(EXIF_ORIENTATION, 1)))
    except Exception:
        return None


_XMP = b"http://ns.adobe.com/xap/1.0/\0"
_MARKER = struct.Struct(">BBH")  # 0xFF, a marker, the length of its segment
_SIZE = struct.Struct(">HH")  # a frame header's height and width
_NO_LENGTH = frozenset((0x01, *range(0xD0, 0xD8)))  # markers without a segment
_SOF_MARKERS = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))


def own_cuda_stream(device: Any) -> Callable[[], contextlib.AbstractContextManager[None]]:
    """A CUDA stream of the decoder's own on ``device``, as a context to work in: the work queued in
    it is complete when the context ends (the pixels are whole before anyone else reads them)."""
    import torch

    stream = torch.cuda.Stream(device=device)

    @contextlib.contextmanager
    def on_stream() -> Iterator[None]:
        with torch.cuda.stream(stream):
            yield
        stream.synchronize()

    return on_stream


class Bitstreams:
    """One host buffer, reused for every job, that the decode thread reads a job's JPEGs into, each
    then handed to nvJPEG as a tensor over its part of the buffer: one copy per image from the page
    cache (or from the reader's bytes), none to make it writable for ``torch.frombuffer``, and no
    fresh memory to fault in per batch. A job's parts are valid until the next :meth:`load`; the
    decode thread finishes each job (its pixels synchronised) before it loads the next. The buffer
    grows to the largest job so far, and is given back when a job needs less than a quarter of it
    and it holds more than :data:`BITSTREAMS_KEEP` (a batch of large photos does not pin its size)."""

    def __init__(self, files: OpenFiles) -> None:
        self.files = files
        self._buffer = bytearray()

    def load(self, payloads: Sequence[bytes | ByteRange | None]) -> list[memoryview | ByteRange | None]:
        """Each payload's bytes as a part of the buffer; a range that cannot be read stays a range
        (the CPU decoder reads it again and writes why), None stays None."""
        need = sum(p.size if isinstance(p, ByteRange) else len(p) for p in payloads if p is not None)
        if need > len(self._buffer):
            self._buffer = bytearray(max(need, 2 * len(self._buffer)))  # a new one: views of the old may live on
        elif len(self._buffer) > max(BITSTREAMS_KEEP, 4 * need):
            self._buffer = bytearray(need)
        view = memoryview(self._buffer)
        parts: list[memoryview | ByteRange | None] = []
        at = 0
        for payload in payloads:
            if payload is None:
                parts.append(None)
            elif isinstance(payload, ByteRange):
                try:
                    size = self.files.read_into(payload, view[at:])
                except OSError:
                    parts.append(payload)
                    continue
                parts.append(view[at:at + size])
                at += payload.size
            else:
                view[at:at + len(payload)] = payload
                parts.append(view[at:at + len(payload)])
                at += len(payload)
        return parts


class GpuDecoder(Decoder):
    """Decodes each submitted chunk as one nvJPEG batch on ``device``.

    ``device`` is where ``torchvision.io.decode_jpeg`` decodes and the images are resized, and
    ``stream`` the context that work runs in; by default a CUDA device, checked here, and a stream
    of the decoder's own (:func:`own_cuda_stream`).
    """

    def __init__(self, options: DecodeOptions, device: str = "cuda",
                 stream: Callable[[], contextlib.AbstractContextManager[Any]] | None = None) -> None:
        import torch

        if stream is None and (not device.startswith("cuda") or not torch.cuda.is_available()):
            raise GpuDecodeUnavailable("--decode gpu needs a CUDA device (use --decode cpu on this machine)")
        self.options = options
        self.device = torch.device(device)
        self._stream = stream or own_cuda_stream(self.device)
        self._jobs: queue.SimpleQueue[DecodeJob | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._files = OpenFiles()  # used by the decode thread only
        self._bitstreams = Bitstreams(self._files)

    def _resize(self, batch: Any) -> Any:
        """(N, 3, H, W) uint8 on the GPU -> shorter side ``min_side``, or with ``crop`` exactly the
        centre ``min_side`` square (resampled from the centre square alone, as the CPU decoders do;
        small images are scaled up to it)."""
        import torch
        import torch.nn.functional as F

        size = self.options.min_side
        if not size:
            return batch
        height, width = batch.shape[2:]
        if self.options.crop:
            side = min(height, width)
            top, left = (height - side) // 2, (width - side) // 2
            batch = batch[:, :, top:top + side, left:left + side]
            target = (size, size)
        elif min(height, width) > size:
            scale = size / min(height, width)
            target = (max(size, round(height * scale)), max(size, round(width * scale)))
        else:
            return batch
        if tuple(batch.shape[2:]) == target:
            return batch
        resized = F.interpolate(batch.float(), size=target, mode="bilinear", antialias=True, align_corners=False)
        return resized.round_().clamp_(0, 255).to(torch.uint8)

    def _finish(self, decoded: list[Any]) -> tuple[list[Any], Any]:
        """Resize decoded images, those of one shape together (one interpolate call per group, not per
        image). With ``crop`` every image becomes a row of one N x S x S x 3 tensor on the GPU (for
        the tensor fast path), each image's result a view of its row; that tensor is also returned
        when every image decoded, else None. Without, images come back as H x W x 3 numpy arrays,
        one copy to the host per group."""
        import torch

        if not self.options.min_side:  # full size: nothing to resize, nothing to stack
            return [None if image is None else image.permute(1, 2, 0).cpu().numpy() for image in decoded], None
        out: list[Any] = [None] * len(decoded)
        if not any(image is not None for image in decoded):
            return out, None
        if not self.options.crop:
            for part, stacked in stacked_by_shape(decoded, limit=RESIZE_GROUP):
                host = self._resize(stacked).permute(0, 2, 3, 1).cpu().numpy()
                for k, image in zip(part, host):
                    out[k] = image
            return out, None
        size = self.options.min_side
        rows = torch.empty((len(decoded), size, size, 3), dtype=torch.uint8, device=self.device)
        for part, stacked in stacked_by_shape(decoded, limit=RESIZE_GROUP):
            squares = self._resize(stacked).permute(0, 2, 3, 1)
            if part[-1] - part[0] == len(part) - 1:  # consecutive rows (images of one size): one copy
                rows[part[0]:part[-1] + 1] = squares
            else:
                for k, square in zip(part, squares.unbind(0)):
                    rows[k] = square
        views = rows.unbind(0)  # one call for every row's view
        for k, image in enumerate(decoded):
            if image is not None:
                out[k] = views[k]
        return out, (rows if all(image is not None for image in decoded) else None)

    def submit(self, payloads: Sequence[bytes | ByteRange | None], pixels: object = None) -> DecodeJob:
        """Queue ``payloads`` for the decode thread (their bytes are read there too); returns at once."""
        job = DecodeJob(payloads)
        if job.payloads:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="curator-gpu-decode", daemon=True)
                self._thread.start()
            self._jobs.put(job)
        return job

    def close(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(timeout=60)
            if self._thread.is_alive():  # still decoding: its files are left to the process exit
                return
            self._thread = None
        self._files.close()

    def _serve(self) -> None:
        """The decode thread: jobs in the order submitted; an error fails its job, not the thread."""
        while (job := self._jobs.get()) is not None:
            try:
                self._decode(job)
            except BaseException as exc:  # e.g. CUDA out of memory: the run reports it at this batch
                job.error = exc
                job._finish()

    def _decode(self, job: DecodeJob) -> None:
        t0 = time.perf_counter()
        job.payloads = self._bitstreams.load(job.payloads)  # an unreadable range stays one
        on_gpu: list[int] = []
        for i, data in enumerate(job.payloads):
            header = _jpeg_header(data) if isinstance(data, memoryview) and data[:3] == JPEG_MAGIC else None
            if header is None or header[2] != 1:  # not a JPEG, or rotated/mirrored: the CPU decoder
                continue
            width, height, _ = header
            if width * height > self.options.max_pixels:
                job.results[i] = DecodeFailure(
                    f"too many pixels ({width}x{height} > --max-pixels {self.options.max_pixels})")
            else:
                on_gpu.append(i)
        with self._stream():  # decoding and resizing: complete when it ends
            self._decode_on_device(job, on_gpu)
        for i, data in enumerate(job.payloads):
            if job.results[i] is None:  # CPU fallback: non-JPEG or nvJPEG refused it
                job.results[i] = decode_one(bytes(data) if isinstance(data, memoryview) else data, self.options)
        job.decode_seconds = time.perf_counter() - t0
        job._finish()

    def _decode_on_device(self, job: DecodeJob, on_gpu: list[int]) -> None:
        """nvJPEG-decode the payloads at ``on_gpu`` into ``job.results`` (None where it refused one)."""
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        decoded: list[Any] = []
        if on_gpu:
            tensors = [torch.frombuffer(job.payloads[i], dtype=torch.uint8) for i in on_gpu]  # no copy
            try:
                decoded = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=self.device, apply_exif_orientation=True)
            except RuntimeError:
                decoded = []
                for tensor in tensors:  # one bad file fails the batch call: retry one by one
                    try:
                        decoded.append(decode_jpeg(tensor, mode=ImageReadMode.RGB, device=self.device,
                                                   apply_exif_orientation=True))
                    except RuntimeError:
                        decoded.append(None)
        images, rows = self._finish(decoded)
        for i, image in zip(on_gpu, images):
            if image is not None:
                job.results[i] = image
        if rows is not None and len(on_gpu) == len(job.payloads):
            job.squares = rows  # every image of the job, in order
