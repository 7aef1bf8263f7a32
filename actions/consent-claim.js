/**
 * Auth0 post-login Action for consent_middleware.
 *
 * 1. Users flagged with app_metadata.deleted === true (CONSENT_WITHDRAW_MODE=flag) may not
 *    sign in, refresh or pass prompt=none any more.
 * 2. The current state of app_metadata.consent (which users cannot write, unlike
 *    user_metadata) goes into the ID token under the namespaced claim set in the Action
 *    secret CONSENT_CLAIM (the same value as the app's CONSENT_CLAIM). Only the current
 *    state: never `history`, so a user with many events has an ID token (and a session
 *    cookie) of the same size as anyone else.
 *
 * Auth0 runs post-login Actions on refresh-token exchanges too, which is what lets the
 * middleware pick up a new consent without a second login.
 */
const CLAIM_FIELDS = ["given", "version", "date", "text_sha256", "text_details", "purposes", "withdrawn"];

exports.onExecutePostLogin = async (event, api) => {
  const claim = event.secrets.CONSENT_CLAIM;
  if (!claim) {
    throw new Error("Set the Action secret CONSENT_CLAIM, e.g. https://example.com/consent");
  }
  const appMetadata = event.user.app_metadata || {};
  if (appMetadata.deleted === true) {
    api.access.deny("user is blocked");
    return;
  }
  const consent = appMetadata.consent;
  if (consent !== undefined && consent !== null && typeof consent === "object") {
    const state = {};
    for (const key of CLAIM_FIELDS) {
      if (key in consent) state[key] = consent[key];
    }
    api.idToken.setCustomClaim(claim, state);
  }
};
