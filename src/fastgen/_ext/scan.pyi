import numpy as np
import numpy.typing as npt

def restart_segments(
    scan: bytes, tables: npt.NDArray[np.uint8], mcu_rows: int, mcu_cols: int, interval: int,
) -> list[bytes]: ...
