// Loaded before every test file (scripts/run-tests.js passes it with --import): every fast-check property
// in the suite, not only the fuzz targets that ask fuzzParams, runs from FUZZ_SEED. A failure in `npm test`
// then replays with the same command, and FUZZ_SEED=<seed> explores other inputs.
import fc from 'fast-check';
import { FUZZ_SEED } from './fuzz.ts';

fc.configureGlobal({ ...fc.readConfigureGlobal(), seed: FUZZ_SEED });
