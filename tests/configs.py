"""Hardware configurations that several test files share (one definition each)."""
from fluidnpu.hw.config import HwConfig

#: X resident across the column tiles while W is chunked (HwConfig.x_resident): W holds
#: 64*k of P, X 128 at 16 rows and 256 at 8, so P from 65 to 256 at k = 1 (129 to 256 at
#: k = 2), at heights 16 and 8.
RESIDENT = HwConfig(tc=4, tp=4, tr=16, x_buf_elems=2048, w_buf_elems=256, mem_bytes=4)
