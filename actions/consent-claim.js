/**
 * Auth0 post-login Action for consent_middleware.
 *
 * 1. Users flagged with app_metadata.deleted === true (CONSENT_WITHDRAW_MODE=flag) may not
 *    sign in, refresh or pass prompt=none any more.
 * 2. user_metadata.consent is copied unchanged into the ID token under the namespaced claim
 *    set in the Action secret CONSENT_CLAIM (the same value as the app's CONSENT_CLAIM).
 *
 * Auth0 runs post-login Actions on refresh-token exchanges too, which is what lets the
 * middleware pick up a new consent without a second login.
 */
exports.onExecutePostLogin = async (event, api) => {
  const claim = event.secrets.CONSENT_CLAIM;
  if (!claim) {
    throw new Error("Set the Action secret CONSENT_CLAIM, e.g. https://example.com/consent");
  }
  if (event.user.app_metadata && event.user.app_metadata.deleted === true) {
    api.access.deny("user is blocked");
    return;
  }
  const consent = event.user.user_metadata && event.user.user_metadata.consent;
  if (consent !== undefined && consent !== null) {
    api.idToken.setCustomClaim(claim, consent);
  }
};
