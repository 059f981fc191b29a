// When a test of huge pages cannot run here: what MADV_COLLAPSE's failure says about the machine. Any
// other failure (or none) is the code's to answer for, and the test goes on.

/** The reason to skip for a collapse that failed with `failure` (an errno name), or null to go on. */
export function collapseSkipReason(failure: string | null): string | null {
  if (failure === 'EINVAL') return 'MADV_COLLAPSE unsupported here (Linux before 6.1, or THP off)';
  if (failure === 'ENOMEM') return 'no free 2 MiB page for MADV_COLLAPSE here (memory fragmented or short)';
  return null;
}
