/** Jest runs the compiled tests in dist/ (`npm test` builds first), as native ES modules. */
export default {
  testEnvironment: 'node',
  roots: ['<rootDir>/dist/test'],
  testMatch: ['**/*.test.js'],
  testTimeout: 60_000,
  maxWorkers: 2,
};
