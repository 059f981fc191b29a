// A stream that cannot be trusted: what was wrong and where, so an operator can find it with the
// analyzer or a hex dump.

/** Which section an error is about, as far as the reader knew it. */
export interface SectionRef {
  /** START/FULL carry it; for PART/END it is the START's, when that was seen. */
  idstr?: string;
  sectionId?: number;
  /** The sequence number the section carries, or the one that was due if it could not be read. */
  seq?: number;
}

/** What kind of damage: lets callers and tests tell them apart without matching message text. */
export type StreamErrorCode =
  /** magic, version, configuration record or format subsection */
  | 'header'
  /** a record type byte that is not START/PART/END/FULL/EOF */
  | 'record-type'
  /** the CRC-32C over the section (or EOF record) does not match */
  | 'checksum'
  /** 0x7E footer missing or naming another section id */
  | 'footer'
  /** a sequence number other than the one due: a section lost, repeated or reordered */
  | 'sequence'
  /** a section that cannot come here: PART before START, START twice, END after FULL, EOF too early … */
  | 'order'
  /** a section larger than the reader's limit */
  | 'too-large'
  /** the input ended inside the header or a record, or without EOF */
  | 'truncated'
  /** a RAM or VFIO payload that does not parse */
  | 'payload';

export class StreamError extends Error {
  /** What is wrong, without the "migration stream:" prefix and the location suffix. */
  readonly detail: string;

  /**
   * @param message what is wrong
   * @param offset byte offset in the stream (for payload errors: of the bad record when the section's
   *   payload offset is known, else within the payload)
   * @param section which section, when known
   * @param code the kind of damage
   */
  constructor(
    message: string,
    readonly offset: number,
    readonly section?: SectionRef,
    readonly code: StreamErrorCode = 'payload',
  ) {
    super(`migration stream: ${message}${where(section)} at byte ${offset}`);
    this.name = 'StreamError';
    this.detail = message;
  }
}

function where(s: SectionRef | undefined): string {
  if (!s) return '';
  const name = s.idstr !== undefined ? `"${s.idstr}"` : undefined;
  const parts = [
    name,
    s.sectionId !== undefined ? `section id ${s.sectionId}` : undefined,
    s.seq !== undefined ? `seq ${s.seq}` : undefined,
  ].filter((x) => x !== undefined);
  return parts.length > 0 ? ` in ${parts.join(', ')}` : '';
}
