import numpy as np
import numpy.typing as npt

def restart_segments(
    scan: bytes, tables: npt.NDArray[np.uint8], mcu_rows: int, mcu_cols: int, interval: int,
) -> list[bytes]: ...
def splice(
    header: bytes, template_scan: bytes, starts: npt.NDArray[np.int64], tiles: int, fresh: bytes,
    tables: npt.NDArray[np.uint8], interval: int, t0: int, r0: int, t1: int, r1: int,
    path: bytes | None = None,
) -> bytes | None: ...
