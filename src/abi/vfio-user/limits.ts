// Sizes and limits of the vfio-user protocol as libvfio-user HEAD enforces them (docs/vfio-user.md "Limits",
// "Capability negotiation"). Negotiated values (the peer's max_data_xfer_size, max_msg_fds) override the defaults at run time.

export const HEADER_SIZE = 16;

/** libvfio-user's SERVER_MAX_DATA_XFER_SIZE: bound on READ/WRITE counts, bitmaps and request argsz. */
export const SERVER_MAX_DATA_XFER_SIZE = 1024 * 1024;

/** libvfio-user's SERVER_MAX_MSG_SIZE: a whole message (header included) larger than this is refused. */
export const SERVER_MAX_MSG_SIZE = SERVER_MAX_DATA_XFER_SIZE + 32;

/** fds libvfio-user advertises in its VERSION reply (`max_msg_fds`). */
export const SERVER_MAX_MSG_FDS = 8;

/** Largest `max_msg_fds` a peer may announce (VFIO_USER_CLIENT_MAX_MSG_FDS_LIMIT). */
export const MAX_MSG_FDS_LIMIT = 1024;

/** Capability defaults when VERSION omits them. */
export const DEFAULT_MAX_MSG_FDS = 1;
export const DEFAULT_MAX_DATA_XFER_SIZE = 1024 * 1024;
export const DEFAULT_MAX_DMA_MAPS = 65535;
export const DEFAULT_PGSIZES = 4096;

/** The only dirty-logging page size libvfio-user accepts (`migration.pgsize`). */
export const MIGRATION_PGSIZE = 4096;

/** A received error_no outside 1..MAX_ERRNO is read as EINVAL (libvfio-user's client does the same). */
export const MAX_ERRNO = 4096;

/** Largest DMA region libvfio-user maps on x86-64/ppc64 (8 TiB); larger → ENOSPC. */
export const MAX_DMA_REGION_SIZE = 8n << 40n;

/** REGION_WRITE_MULTI: each write carries at most 8 data bytes. */
export const WRITE_MULTI_MAX_DATA = 8;
