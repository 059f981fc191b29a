// Record types, RAM flags, VFIO tags and limits of the migration stream. The QEMU values are those of
// migration/savevm.c, migration/ram.c and hw/vfio/migration.c (docs/stream.md, "QEMU's values"); the ones
// marked "ours" belong to the checksummed format docs/stream.md describes. Every integer is big-endian.

/** Stream header: "QEVM" and QEMU_VM_FILE_VERSION. */
export const QEVM_MAGIC = 0x5145564d;
export const QEVM_VERSION = 3;

/** The first byte of each record. */
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

/**
 * Machine-type name in our CONFIGURATION record. A QEMU destination compares it with its own machine
 * type and refuses the stream, instead of misreading our checksummed sections as its own.
 */
export const MACHINE_NAME = 'vfio-migrate';
/**
 * The vmstate subsection of the configuration record that announces our format; its version_id is
 * FORMAT_VERSION. The name follows vmstate's "<parent>/<name>" rule, so it is a well-formed subsection
 * that QEMU (which has no such subsection) refuses by name.
 */
export const FORMAT_SUBSECTION = 'configuration/vfio-migrate-stream';
/**
 * Version of our section layout (payload length, sequence number, CRC-32C, checksummed EOF).
 * 1 was the first layout, with a bare EOF byte and the subsection named "vfio-migrate/format".
 */
export const FORMAT_VERSION = 2;

/** RAM record flags: the low bits of each record's be64 (offset | flags). */
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

/** Flag bits live below the target page size; the rest of the be64 is an offset (or a size). */
export const TARGET_PAGE_SIZE = 4096;
export const RAM_FLAG_MASK = BigInt(TARGET_PAGE_SIZE - 1);
/** A RAM record's header: the be64 (offset | flags); all of a CONTINUE page record before its page. */
export const RAM_RECORD_HEAD_BYTES = 8;
/** The RAM flags this implementation writes and reads; any other bit is refused. */
export const RAM_KNOWN_FLAGS =
  RamFlag.ZERO | RamFlag.MEM_SIZE | RamFlag.PAGE | RamFlag.EOS | RamFlag.CONTINUE | RamFlag.MULTIFD_FLUSH;

/** VFIO section tags: be64 0xFFFFFFFF_EF10_xxxx. */
export const VfioTag = {
  END_OF_STATE: 0xffffffffef100001n,
  DEV_CONFIG_STATE: 0xffffffffef100002n,
  DEV_SETUP_STATE: 0xffffffffef100003n,
  DEV_DATA_STATE: 0xffffffffef100004n,
  DEV_INIT_DATA_SENT: 0xffffffffef100005n,
} as const;

/** Longest idstr (and RAM block name): a u8 length. */
export const MAX_IDSTR_BYTES = 255;

/** Bytes before a PART/END payload: type, be32 section_id, be32 payload_length (ours). */
export const SHORT_HEADER_BYTES = 1 + 4 + 4;
/** Bytes before a START/FULL payload, plus the idstr: type, id, u8 len, instance, version, payload_length. */
export const FULL_HEADER_FIXED_BYTES = 1 + 4 + 1 + 4 + 4 + 4;
/** Bytes after a section's payload: footer (0x7E + be32 id), be32 sequence number, be32 CRC-32C. */
export const SECTION_TRAILER = 1 + 4 + 4 + 4;
/** The EOF record: 0x00, be32 sequence number (= number of sections), be32 CRC-32C. */
export const EOF_RECORD_BYTES = 1 + 4 + 4;

/** Default largest section a decoder accepts, header and trailer included. */
export const DEFAULT_MAX_SECTION_BYTES = 16 << 20;
/**
 * What writers should keep a RAM PART payload to (4 MiB = 1024 pages plus record headers, far under
 * DEFAULT_MAX_SECTION_BYTES, so a section never grows past what a reader accepts).
 */
export const RECOMMENDED_RAM_SECTION_PAYLOAD = 4 << 20;
