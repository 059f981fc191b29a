/** Whether a UNIX stream socket listens at `path` (see unix-listening.mjs). */
export function listening(path: string): boolean;
