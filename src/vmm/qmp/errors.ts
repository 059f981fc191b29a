// QmpError lives in protocol.ts; this module keeps the import path that existing callers use.
export { QmpError, type QmpErrorClass } from './protocol.ts';
