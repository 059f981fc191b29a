// A stream that cannot be trusted: what was wrong and where, so an operator can find it.

export interface SectionRef {
  idstr?: string;
  sectionId?: number;
  seq?: number;
}

export class StreamError extends Error {
  constructor(
    message: string,
    readonly offset: number,
    readonly section?: SectionRef,
  ) {
    const where = section
      ? ` in section ${section.seq ?? '?'} (${section.idstr ?? `id ${section.sectionId ?? '?'}`})`
      : '';
    super(`migration stream: ${message}${where} at byte ${offset}`);
    this.name = 'StreamError';
  }
}
