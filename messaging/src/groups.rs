//! Groups and membership: the member list, each user's groups, and the limits on both, kept
//! in step in one transaction per change (keys in `keys.rs`).

use std::collections::BTreeSet;

use roam_store::{RangeOption, Store, StoreError, Tx, TxError, codec, strinc};

use crate::conversation::{check_group, check_user};
use crate::keys::{self, V1};
use crate::{Messaging, MessagingError};

/// A group as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Its id.
    pub id: String,
    /// Members after the change.
    pub members: u64,
    /// Creation time, ms since the Unix epoch.
    pub created_at_ms: u64,
}

/// Refusals decided inside a transaction, carried out through `TxError::Fatal`.
fn refuse(e: MessagingError) -> TxError {
    TxError::Fatal(StoreError::Aborted(encode_refusal(&e)))
}

/// A refusal travels as `kind\tmessage` in `StoreError::Aborted` and is rebuilt outside.
fn encode_refusal(e: &MessagingError) -> String {
    let kind = match e {
        MessagingError::NotFound(_) => "not_found",
        MessagingError::Exists(_) => "exists",
        MessagingError::Limit(_) => "limit",
        _ => "invalid",
    };
    format!("{kind}\t{e}")
}

pub(crate) fn decode_refusal(e: StoreError) -> MessagingError {
    if let StoreError::Aborted(m) = &e
        && let Some((kind, message)) = m.split_once('\t')
    {
        let message = message.to_owned();
        return match kind {
            "not_found" => MessagingError::NotFound(message),
            "exists" => MessagingError::Exists(message),
            "limit" => MessagingError::Limit(message),
            _ => MessagingError::Invalid(message),
        };
    }
    MessagingError::Store(e)
}

/// The group record: (created_at_ms, members); `None` when there is no such group.
fn load_group(tx: &mut Tx<'_>, group: &str) -> Result<Option<(u64, u64)>, TxError> {
    let k = keys::group(group);
    Ok(match tx.get(&k)? {
        Some(v) => Some(codec::decode(&k, &v, V1)?),
        None => None,
    })
}

fn range(prefix: &[u8]) -> RangeOption {
    RangeOption::between(prefix.to_vec(), strinc(prefix))
}

/// Adds `users` to `group` (whose record is `record`); returns the new member count.
fn add(
    tx: &mut Tx<'_>,
    group: &str,
    record: (u64, u64),
    users: &BTreeSet<String>,
    now_ms: u64,
    max_members: usize,
    max_groups: usize,
) -> Result<u64, TxError> {
    let (created, mut members) = record;
    for user in users {
        let member = keys::group_member(group, user);
        if tx.get(&member)?.is_some() {
            continue;
        }
        if members as usize >= max_members {
            return Err(refuse(MessagingError::Limit(format!(
                "group {group} has {members} members, the most allowed (messaging.max_group_members)"
            ))));
        }
        let theirs = tx.get_range(&range(&keys::user_groups(user)).limit(max_groups))?;
        if theirs.len() >= max_groups {
            return Err(refuse(MessagingError::Limit(format!(
                "{user} is in {max_groups} groups, the most allowed (messaging.max_groups_per_user)"
            ))));
        }
        let joined = codec::encode(V1, &(now_ms,));
        tx.set(&member, &joined)?;
        tx.set(&keys::user_group(user, group), &joined)?;
        members += 1;
    }
    tx.set(&keys::group(group), &codec::encode(V1, &(created, members)))?;
    Ok(members)
}

fn checked_users(users: &[String]) -> Result<BTreeSet<String>, MessagingError> {
    for u in users {
        check_user(u)?;
    }
    Ok(users.iter().cloned().collect())
}

async fn transact<T: Send + 'static>(
    store: &Store,
    f: impl FnMut(&mut Tx<'_>) -> Result<T, TxError> + Send + 'static,
) -> Result<T, MessagingError> {
    store.transact(f).await.map_err(decode_refusal)
}

impl Messaging {
    /// Creates group `id` with `members` (the id must be new).
    pub async fn create_group(
        &self,
        id: &str,
        members: &[String],
        now_ms: u64,
    ) -> Result<Group, MessagingError> {
        check_group(id)?;
        let users = checked_users(members)?;
        let (max_members, max_groups) = (
            self.options.max_group_members,
            self.options.max_groups_per_user,
        );
        let group = id.to_owned();
        let count = transact(&self.store, move |tx| {
            if load_group(tx, &group)?.is_some() {
                return Err(refuse(MessagingError::Exists(format!(
                    "group {group} already exists"
                ))));
            }
            add(
                tx,
                &group,
                (now_ms, 0),
                &users,
                now_ms,
                max_members,
                max_groups,
            )
        })
        .await?;
        Ok(Group {
            id: id.to_owned(),
            members: count,
            created_at_ms: now_ms,
        })
    }

    /// Adds `users` to group `id` (members already in stay); returns the group after.
    pub async fn add_members(
        &self,
        id: &str,
        users: &[String],
        now_ms: u64,
    ) -> Result<Group, MessagingError> {
        check_group(id)?;
        let users = checked_users(users)?;
        let (max_members, max_groups) = (
            self.options.max_group_members,
            self.options.max_groups_per_user,
        );
        let group = id.to_owned();
        let (count, created) = transact(&self.store, move |tx| {
            let record = load_group(tx, &group)?.ok_or_else(|| not_found(&group))?;
            let n = add(tx, &group, record, &users, now_ms, max_members, max_groups)?;
            Ok((n, record.0))
        })
        .await?;
        Ok(Group {
            id: id.to_owned(),
            members: count,
            created_at_ms: created,
        })
    }

    /// Removes `users` from group `id` (non-members are ignored); returns the group after.
    /// A removed member gets no later message and can no longer read the group.
    pub async fn remove_members(
        &self,
        id: &str,
        users: &[String],
    ) -> Result<Group, MessagingError> {
        check_group(id)?;
        let users = checked_users(users)?;
        let group = id.to_owned();
        let (count, created) = transact(&self.store, move |tx| {
            let (created, mut members) =
                load_group(tx, &group)?.ok_or_else(|| not_found(&group))?;
            for user in &users {
                let member = keys::group_member(&group, user);
                if tx.get(&member)?.is_some() {
                    tx.clear(&member)?;
                    tx.clear(&keys::user_group(user, &group))?;
                    members = members.saturating_sub(1);
                }
            }
            tx.set(
                &keys::group(&group),
                &codec::encode(V1, &(created, members)),
            )?;
            Ok((members, created))
        })
        .await?;
        Ok(Group {
            id: id.to_owned(),
            members: count,
            created_at_ms: created,
        })
    }

    /// The members of group `id`, in id order.
    pub async fn members(&self, id: &str) -> Result<Vec<String>, MessagingError> {
        check_group(id)?;
        let group = id.to_owned();
        transact(&self.store, move |tx| {
            load_group(tx, &group)?.ok_or_else(|| not_found(&group))?;
            member_list(tx, &group)
        })
        .await
    }

    /// The groups `user` is a member of, in id order.
    pub async fn groups_of(&self, user: &str) -> Result<Vec<String>, MessagingError> {
        check_user(user)?;
        let prefix = keys::user_groups(user);
        transact(&self.store, move |tx| {
            Ok(tx
                .get_range(&range(&prefix))?
                .iter()
                .filter_map(|kv| keys::last_string(&prefix, &kv.key))
                .collect())
        })
        .await
    }

    /// Which of `others` share a conversation with `user` (one answer each, in order): a
    /// 1:1 conversation with a message in it (either way), or a group both are members of.
    /// Everyone shares one with themself. What a user may learn of others' presence.
    pub async fn shares_conversation(
        &self,
        user: &str,
        others: &[String],
    ) -> Result<Vec<bool>, MessagingError> {
        check_user(user)?;
        let (user, others) = (user.to_owned(), others.to_vec());
        transact(&self.store, move |tx| {
            let prefix = keys::user_groups(&user);
            let mine: BTreeSet<String> = tx
                .get_range(&range(&prefix))?
                .iter()
                .filter_map(|kv| keys::last_string(&prefix, &kv.key))
                .collect();
            let mut out = Vec::with_capacity(others.len());
            for other in &others {
                let mut shared = *other == user
                    || (check_user(other).is_ok()
                        && tx.get(&keys::user_conversation(&user, other))?.is_some());
                // Else a group of `user` that `other` is in.
                for group in &mine {
                    if shared {
                        break;
                    }
                    shared = tx.get(&keys::group_member(group, other))?.is_some();
                }
                out.push(shared);
            }
            Ok(out)
        })
        .await
    }

    /// Refuses `user` on group `id` unless a member (`NotFound` for no such group).
    pub(crate) async fn check_member(&self, id: &str, user: &str) -> Result<(), MessagingError> {
        let (group, who) = (id.to_owned(), user.to_owned());
        transact(&self.store, move |tx| {
            load_group(tx, &group)?.ok_or_else(|| not_found(&group))?;
            if tx.get(&keys::group_member(&group, &who))?.is_none() {
                return Err(refuse(MessagingError::Invalid(String::new())));
            }
            Ok(())
        })
        .await
        .map_err(|e| match e {
            MessagingError::Invalid(_) => forbidden(id, user),
            other => other,
        })
    }

    /// The members of group `id` if `user` is one of them.
    pub(crate) async fn members_if_member(
        &self,
        id: &str,
        user: &str,
    ) -> Result<Vec<String>, MessagingError> {
        let members = self.members(id).await?;
        if members.binary_search_by(|m| m.as_str().cmp(user)).is_err() {
            return Err(forbidden(id, user));
        }
        Ok(members)
    }
}

fn member_list(tx: &mut Tx<'_>, group: &str) -> Result<Vec<String>, TxError> {
    let prefix = keys::group_members(group);
    Ok(tx
        .get_range(&range(&prefix))?
        .iter()
        .filter_map(|kv| keys::last_string(&prefix, &kv.key))
        .collect())
}

fn not_found(group: &str) -> TxError {
    refuse(MessagingError::NotFound(format!("no group {group}")))
}

fn forbidden(group: &str, user: &str) -> MessagingError {
    MessagingError::Forbidden(format!("{user} is not a member of group {group}"))
}

impl Messaging {
    /// A fresh group id (from the ID service), for a group created without one.
    pub async fn new_group_id(&self) -> Result<String, MessagingError> {
        Ok(format!("g{}", self.next_id().await?))
    }
}
