/** Jest runs the compiled tests in dist/ (`npm test` builds first), as native ES modules. */
export default {
  testEnvironment: 'node',
  roots: ['<rootDir>/dist/test'],
  testMatch: ['**/*.test.js'],
  testTimeout: 60_000,
  // One test file at a time. Most files start masters, workers and load loops that keep both of this
  // machine's 2 cores busy. With two files at once, 5 of 9 full runs had a test fail on a deadline or
  // a refused connection (as had the suite before, 2 of 3); one at a time, 3 of 3 passed, in about
  // 3 minutes.
  maxWorkers: 1,
};
