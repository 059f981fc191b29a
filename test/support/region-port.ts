// Tests use the library's in-process region port.
export { localRegionPort as regionPort } from '../../src/vmm/vfio/local-region-port.ts';
