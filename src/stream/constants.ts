// Record types, RAM flags and VFIO tags of the QEMU migration stream (spec/qemu-stream.md), and our
// format's additions. All integers in the stream are big-endian.

export const QEVM_MAGIC = 0x5145564d;
export const QEVM_VERSION = 3;

export const RecordType = {
  EOF: 0x00,
  SECTION_START: 0x01,
  SECTION_PART: 0x02,
  SECTION_END: 0x03,
  SECTION_FULL: 0x04,
  SUBSECTION: 0x05,
  VMDESCRIPTION: 0x06,
  CONFIGURATION: 0x07,
  COMMAND: 0x08,
  SECTION_FOOTER: 0x7e,
} as const;

/** Machine name in our CONFIGURATION record: a QEMU destination refuses it instead of misreading us. */
export const MACHINE_NAME = 'vfio-migrate';
/** Subsection announcing our format (its version_id is FORMAT_VERSION): sequence numbers and CRC-32C. */
export const FORMAT_SUBSECTION = 'vfio-migrate/format';
export const FORMAT_VERSION = 1;

export const RamFlag = {
  FULL: 0x01,
  ZERO: 0x02,
  MEM_SIZE: 0x04,
  PAGE: 0x08,
  EOS: 0x10,
  CONTINUE: 0x20,
  XBZRLE: 0x40,
  HOOK: 0x80,
  COMPRESS_PAGE: 0x100,
  MULTIFD_FLUSH: 0x200,
} as const;

/** Flag bits live below the target page size. */
export const RAM_FLAG_MASK = 0xfffn;
export const TARGET_PAGE_SIZE = 4096;

export const VfioTag = {
  END_OF_STATE: 0xffffffffef100001n,
  DEV_CONFIG_STATE: 0xffffffffef100002n,
  DEV_SETUP_STATE: 0xffffffffef100003n,
  DEV_DATA_STATE: 0xffffffffef100004n,
  DEV_INIT_DATA_SENT: 0xffffffffef100005n,
} as const;

/** Bytes after a section's payload: footer (0x7E + be32 id), be32 sequence number, be32 CRC-32C. */
export const SECTION_TRAILER = 1 + 4 + 4 + 4;

/** Default largest section a decoder accepts (header + payload + trailer). */
export const DEFAULT_MAX_SECTION_BYTES = 16 << 20;
