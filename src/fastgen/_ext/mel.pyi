import numpy as np
import numpy.typing as npt

def frame_count(n_samples: int, hop: int) -> int: ...
def stft_magnitude(
    wav: npt.NDArray[np.float32], n_fft: int, hop: int, reflect: bool, preemph: float,
    out: npt.NDArray[np.float32],
) -> None: ...
def log_mel(
    wav: npt.NDArray[np.float32], n_fft: int, hop: int, reflect: bool, preemph: float,
    fstart: npt.NDArray[np.int32], flen: npt.NDArray[np.int32], foff: npt.NDArray[np.int32],
    weights: npt.NDArray[np.float64], out: npt.NDArray[np.float32],
) -> None: ...
